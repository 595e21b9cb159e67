"""Session steps inside the engine: each step renders and encodes one chunk and returns the
message for the client. One step of a session runs at a time (the scheduler sees to it)."""
from __future__ import annotations

import base64
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from flashhead import constants as C
from flashhead.pipeline import GenerationResult, Prepared, iter_chunks, load_portrait, prepare, \
    request_from_input, result_json

MP4_MIME = "video/mp4"


def data_uri(data: bytes, mime: str = MP4_MIME) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def new_fmp4_encoder():
    from flashhead.video.encode import FragmentedMp4Encoder

    return FragmentedMp4Encoder()


def mime_of(encoder) -> str:
    """The MediaSource type string, e.g. 'video/mp4; codecs="avc1.42C01E, mp4a.40.2"'."""
    return encoder.mime_type


@dataclass
class StreamOutput:
    """Where a stream's files go: each segment through `segment`, the final MP4 through `store`."""

    work_dir: Path
    store: Callable[[Path, str, str], str]          # (path, content_type, file_name) -> URL
    segment: Callable[[bytes, str], object] = lambda data, _name: data_uri(data)


def stream_events(prep: Prepared, engines, out: StreamOutput, *,
                  should_cancel: Callable[[], bool] | None = None) -> Iterator[dict]:
    """Render `prep` once: yield a chunk event per chunk, then the final output."""
    t0 = time.perf_counter()
    path = out.work_dir / f"flashhead-{prep.seed}-{time.time_ns()}.mp4"
    try:
        yield from _render_events(prep, engines, out, should_cancel, path, t0)
    except BaseException:         # failed, or cancelled (the client left): no partial MP4 stays
        path.unlink(missing_ok=True)
        raise


def _render_events(prep: Prepared, engines, out: StreamOutput, should_cancel, path: Path,
                   t0: float) -> Iterator[dict]:
    from flashhead.video.encode import Mp4Writer

    render_s = encode_s = 0.0
    with new_fmp4_encoder() as encoder, Mp4Writer(path) as writer:
        t = time.perf_counter()
        for chunk in iter_chunks(prep, engines, should_cancel=should_cancel):
            t_rendered = time.perf_counter()
            writer.write(chunk.frames, chunk.audio)
            event = {"type": "chunk", "index": chunk.index, "start": round(chunk.start_s, 3),
                     "duration": round(chunk.duration_s, 3),
                     "segment": out.segment(encoder.encode_chunk(chunk.frames, chunk.audio),
                                            f"segment-{chunk.index:05d}.m4s")}
            if chunk.index == 0:
                event["init_segment"] = out.segment(encoder.init_segment(), "init.mp4")
                event["mime"] = mime_of(encoder)
            render_s += t_rendered - t
            encode_s += time.perf_counter() - t_rendered
            yield event
            t = time.perf_counter()
        tail = encoder.finish()      # the encoders' last packets (AAC delay), usually small
        if tail:
            yield {"type": "chunk", "index": chunk.index + 1, "start": round(prep.duration, 3),
                   "duration": 0.0, "segment": out.segment(tail, "segment-tail.m4s")}
    timings = {**{k: prep.timings[k] for k in ("tts", "features", "inputs")},
               "render": render_s, "encode": encode_s,
               "total": time.perf_counter() - t0 + sum(prep.timings.values())}
    result = GenerationResult(path, prep.seed, prep.duration, timings, path.stat().st_size)
    url = out.store(path, MP4_MIME, path.name)
    yield result_json(result, url, path.name)


def stream_output(storage, base_url: str, work_dir: Path, segments: str) -> StreamOutput:
    """segments: "data_uri" (SSE default), "url" (stored files), "bytes" (msgpack realtime)."""
    def store(path: Path, content_type: str, name: str) -> str:
        stored = storage.put_file(path, content_type, name)
        path.unlink(missing_ok=True)
        return storage.url(stored.key, base_url)

    if segments == "url":
        return StreamOutput(work_dir, store, lambda data, name: storage.url(
            storage.put_bytes(data, MP4_MIME, name).key, base_url))
    if segments == "bytes":
        return StreamOutput(work_dir, store, lambda data, _name: data)
    return StreamOutput(work_dir, store)


class StreamTask:
    """A whole request rendered chunk by chunk (SSE /stream, realtime unary)."""

    live = False

    def __init__(self, events: Iterator[dict]):
        self.events = events
        self.last_step = 0.0
        self.done = False

    @classmethod
    def open(cls, spec: dict, engines, storage, work_dir: Path) -> "StreamTask":
        """Prepare (fetch, decode, TTS, features): errors here reach the client before any chunk."""
        from flashhead.storage.localize import localize

        payload, local = localize(spec["payload"], storage, storage.own_hosts(spec["base_url"]), work_dir)
        req = request_from_input(payload, spec["endpoint"])
        prep = prepare(req, engines, allow_paths=local)
        out = stream_output(storage, spec["base_url"], work_dir, spec.get("segments", "data_uri"))
        return cls(stream_events(prep, engines, out))

    def key(self, now: float) -> tuple[int, float]:
        """Scheduling order (smallest first) and whether a step is due: streams fill spare time."""
        return (1, self.last_step)

    def ready(self, now: float) -> bool:
        return not self.done

    def step(self) -> list[tuple[str, object]]:
        self.last_step = time.monotonic()
        event = next(self.events, None)
        if event is None:
            self.done = True
            return [("end", None)]
        return [("event", event)]

    def close(self) -> None:
        self.events.close()


class LiveTask:
    """A live realtime session: one chunk per step, when it is due on the media clock.

    spec["output"]: "fmp4" (the realtime WebSocket: an encoded media segment per chunk) or "raw"
    (WebRTC: the API re-encodes for RTP, so the chunk carries its frames as I420 bytes and its
    audio as PCM16; with no AAC framing to respect, chunks may be as short as one frame)."""

    live = True

    def __init__(self, session, encoder):
        self.session, self.encoder = session, encoder     # encoder None: raw output
        self.done = False

    @classmethod
    def open(cls, spec: dict, engines, storage, work_dir: Path) -> tuple["LiveTask", dict]:
        from flashhead.live import LiveSession
        from flashhead.storage.localize import localize

        payload, local = localize({"image_url": spec["image_url"]}, storage,
                                  storage.own_hosts(spec["base_url"]), work_dir)
        crop = load_portrait(payload["image_url"], engines, allow_paths=local)[0]
        portrait = engines.portraits.get(crop)
        seed = spec.get("seed")
        seed = random.randrange(2**31) if seed is None else seed
        raw = spec.get("output") == "raw"
        shape = {"chunk_frames": spec["chunk_frames"], "lead_s": spec["lead_s"]} if raw else {}
        session = LiveSession(engines, portrait, seed, pace=bool(spec.get("pace", True)), **shape)
        encoder = None if raw else new_fmp4_encoder()
        started = {"type": "started", "seed": seed, "fps": C.FPS, "sample_rate": C.SAMPLE_RATE,
                   "chunk_frames": session.chunk_frames}
        if encoder is not None:
            started.update(init_segment=encoder.init_segment(), mime=mime_of(encoder))
        return cls(session, encoder), started

    def key(self, now: float) -> tuple[int, float]:
        return (0, self.session.due())

    def ready(self, now: float) -> bool:
        return not self.done and self.session.due() <= now

    def step(self) -> list[tuple[str, object]]:
        chunk = self.session.next_chunk(timeout=0)
        if chunk is None:
            return []
        event = {"type": "chunk", "index": chunk.index, "start": round(chunk.start_s, 3),
                 "duration": round(chunk.duration_s, 3), "speaking": chunk.speaking,
                 "speech_frames": chunk.speech_frames, "interrupted": chunk.interrupted}
        if self.encoder is None:
            event.update(frames=len(chunk.frames), video=i420_bytes(chunk.frames), pcm=pcm16_bytes(chunk.audio))
        else:
            event["segment"] = self.encoder.encode_chunk(chunk.frames, chunk.audio)
        return [("event", event)]

    def stopped(self) -> dict:
        frames = self.session.frames_out
        return {"type": "stopped", "frames": frames, "duration": round(frames / C.FPS, 3)}

    def close(self) -> None:
        self.session.close()
        if self.encoder is not None:
            self.encoder.close()


def i420_bytes(frames) -> bytes:
    """RGB frames (N, H, W, 3) -> their I420 planes (yuv420p, BT.601 limited range, as a VP8/H.264
    encoder takes them), frame after frame: N * H * W * 3/2 bytes."""
    from flashhead.video.encode import i420

    return b"".join(i420(f).tobytes() for f in frames)


def pcm16_bytes(audio) -> bytes:
    """float32 mono samples in [-1, 1] -> PCM16 little-endian."""
    import numpy as np

    return (np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
