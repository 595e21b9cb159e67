"""Read back what was encoded: stream facts, durations and frames (tests, benches, CLI checks)."""
from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from flashhead.video import fmp4

Source = str | Path | bytes


def _open(source: Source):
    return av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source))


def _top_boxes(source: Source) -> list[str]:
    if isinstance(source, (bytes, bytearray)):
        head = bytes(source)
    else:
        head = Path(source).read_bytes()
    return [box.kind for box in fmp4.iter_boxes(head)]


def _span(packets: list[tuple[int, int]], time_base) -> float:
    """Seconds from the first packet's start (not before 0) to the last packet's end."""
    if not packets:
        return 0.0
    start = max(min(p for p, _ in packets), 0)
    end = max(p + d for p, d in packets)
    return float((end - start) * time_base)


def probe(source: Source) -> dict:
    """width, height, fps, video_codec, profile, audio_codec, sample_rate, duration,
    n_frames, video_duration, audio_duration (seconds), boxes (top-level MP4 box kinds)."""
    info: dict = {"boxes": _top_boxes(source)}
    with _open(source) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        packets: dict[int, list[tuple[int, int]]] = {}
        for packet in container.demux():
            if packet.size and packet.pts is not None:
                packets.setdefault(packet.stream.index, []).append((packet.pts, packet.duration or 0))
        info["duration"] = container.duration / av.time_base if container.duration else None
        if video is not None:
            vp = packets.get(video.index, [])
            info.update(width=video.codec_context.width, height=video.codec_context.height,
                        fps=float(video.average_rate or video.guessed_rate or 0),
                        video_codec=video.codec_context.name, profile=video.codec_context.profile,
                        pix_fmt=video.codec_context.pix_fmt, n_frames=len(vp),
                        video_duration=_span(vp, video.time_base))
        if audio is not None:
            ap = packets.get(audio.index, [])
            declared = float(audio.duration * audio.time_base) if audio.duration else None
            info.update(audio_codec=audio.codec_context.name, sample_rate=audio.codec_context.sample_rate,
                        channels=audio.codec_context.layout.nb_channels,
                        audio_duration=declared if declared is not None else _span(ap, audio.time_base))
    return info


def read_frames(source: Source) -> Iterator[np.ndarray]:
    """Decoded video frames as H x W x 3 uint8 RGB arrays."""
    with _open(source) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def read_audio(source: Source) -> np.ndarray:
    """Decoded audio as float32 mono (channels averaged) at the stream's own rate."""
    with _open(source) as container:
        planes = [_planar(f) for f in container.decode(audio=0)]
    return np.concatenate(planes, axis=1).mean(axis=0) if planes else np.zeros(0, np.float32)


def _planar(frame: av.AudioFrame) -> np.ndarray:
    array = frame.to_ndarray().astype(np.float32)
    channels = frame.layout.nb_channels
    return array if frame.format.is_planar else array.reshape(-1, channels).T
