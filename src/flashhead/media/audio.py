"""Speech uploads (WAV, MP3, AAC/M4A, Ogg/Opus, FLAC, WebM) -> float32 mono at SAMPLE_RATE,
refusing long files as soon as the limit is passed.

The container is sniffed from the bytes first and its demuxer is forced: FFmpeg never probes,
so a concat script, a playlist or an image sequence is never opened as one. Decoding runs
from memory with FFmpeg's format and protocol allow-lists set, so even a demuxer that wanted
another resource (a file, a URL, an MP4 data reference) could not open it."""
from __future__ import annotations

import io

import av
import numpy as np

from flashhead import constants as C
from flashhead.errors import InputError, LimitExceeded
from flashhead.media.sniff import AUDIO, AUDIO_NAMES, describe, sniff

# No protocol is allowed: PyAV reads our bytes through its own I/O callbacks, which need none.
_OPTIONS = {"protocol_whitelist": "none", "enable_drefs": "0", "use_absolute_path": "0"}


def decode_audio(
    data: bytes, *, field: str = "audio_url", max_seconds: float = C.MAX_AUDIO_SECONDS
) -> np.ndarray:
    """Decode `data` to a 1-D float32 array at SAMPLE_RATE Hz, mono (channels averaged)."""
    max_samples = int(max_seconds * C.SAMPLE_RATE)
    kind = sniff(data)
    if kind not in AUDIO:
        raise InputError(f"the file is {describe(data)}, not {AUDIO_NAMES} audio", field=field)
    try:
        with open_container(data, kind.demuxer) as container:
            if not container.streams.audio:
                raise InputError("the file has no audio track", field=field)
            stream = container.streams.audio[0]
            if stream.codec_context is None:   # PyAV 15 crashes the process decoding such a stream
                raise InputError(f"the {kind.name} file's audio codec has no decoder here", field=field)
            _check_declared_duration(container, stream, max_seconds, field)
            pieces = _decode(container, stream, max_samples, max_seconds, field)
    except (av.FFmpegError, ValueError, EOFError):
        raise InputError(f"the {kind.name} file is damaged or holds no audio that can be decoded",
                         field=field) from None
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if audio.size < C.SAMPLES_PER_FRAME:
        raise InputError(
            f"the audio holds no speech: {audio.size / C.SAMPLE_RATE:.3f} s, under one video frame",
            field=field,
        )
    return audio


def open_container(data: bytes, demuxer: str) -> av.container.InputContainer:
    """Open `data` in memory with exactly `demuxer`, no protocol and no other demuxer allowed."""
    options = {**_OPTIONS, "format_whitelist": demuxer}
    return av.open(io.BytesIO(data), mode="r", format=demuxer, container_options=options)


def _check_declared_duration(container, stream, max_seconds: float, field: str) -> None:
    """Refuse at once when the header already declares a duration over the limit."""
    seconds = None
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    if seconds is not None and seconds > max_seconds + C.FRAME_SECONDS:
        raise LimitExceeded(_too_long(seconds, max_seconds), field=field)


def _decode(container, stream, max_samples: int, max_seconds: float, field: str) -> list[np.ndarray]:
    # Keep the channels and average them here: swresample's stereo -> mono downmix adds the
    # channels at -3 dB each, which makes a centred voice 41 % louder than in either channel.
    # Packed (interleaved) samples: one plane whatever the channel count. PyAV 15 crashes the
    # process reading a planar frame of 8 or more channels (to_ndarray past its 8 data pointers).
    resampler = av.AudioResampler(format="flt", layout=None, rate=C.SAMPLE_RATE)
    pieces: list[np.ndarray] = []
    total = 0
    for frame in container.decode(stream):
        frame.pts = None  # let the resampler count samples; broken timestamps must not matter
        for out in resampler.resample(frame):
            pieces.append(_mono(out))
            total += pieces[-1].size
        if total > max_samples:
            raise LimitExceeded(_too_long(None, max_seconds), field=field)
    for out in resampler.resample(None):
        pieces.append(_mono(out))
        total += pieces[-1].size
    if total > max_samples:
        raise LimitExceeded(_too_long(total / C.SAMPLE_RATE, max_seconds), field=field)
    return pieces


def _mono(frame: av.AudioFrame) -> np.ndarray:
    samples = frame.to_ndarray().reshape(-1, frame.layout.nb_channels)   # packed: samples x channels
    return samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0].astype(np.float32)


def _too_long(seconds: float | None, max_seconds: float) -> str:
    length = f"{seconds:.1f} s" if seconds is not None else f"longer than {max_seconds:g} s"
    return f"the audio is {length}; the limit is {max_seconds:g} s"

