"""inputs -> speech -> features -> renderer -> chunks: the one generator every output consumes.

The offline MP4 (generate), the SSE stream and the realtime session all iterate `iter_chunks`.
"""
from __future__ import annotations

import hashlib
import math
import queue
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from flashhead import constants as C
from flashhead.config import Settings, get_settings
from flashhead.errors import Cancelled
from flashhead.render.base import Renderer, SpeechSpan
from flashhead.schemas import FlashHeadAudioRequest, FlashHeadRequest
from flashhead.speech.base import Speech, TTSEngine
from flashhead.visemes.base import FrameFeatures

Request = FlashHeadRequest | FlashHeadAudioRequest
CancelCheck = Callable[[], bool]
LogFn = Callable[[str], None]
CACHE_MAX_PIXELS = 4_000_000   # decoded originals larger than this are not kept in the cache


@dataclass
class Chunk:
    """A few hundred ms of frames plus exactly the matching audio, on one media clock."""

    index: int
    start_frame: int
    frames: np.ndarray   # (N, 512, 512, 3) uint8 RGB
    audio: np.ndarray    # float32, N * C.SAMPLES_PER_FRAME samples

    @property
    def start_s(self) -> float:
        return self.start_frame / C.FPS

    @property
    def duration_s(self) -> float:
        return len(self.frames) / C.FPS


@dataclass
class Prepared:
    """Validated, fetched and decoded inputs, ready to render."""

    seed: int
    speech: Speech
    features: FrameFeatures
    portrait: object
    timings: dict = field(default_factory=dict)
    framing: "Framing | None" = None   # set when the caller keeps the original framing

    @property
    def n_frames(self) -> int:
        return len(self.features)

    @property
    def duration(self) -> float:
        return self.n_frames / C.FPS


@dataclass
class Framing:
    """The original picture and where the 512 crop came from, for paste-back output."""

    original: np.ndarray   # (H, W, 3) uint8 RGB, cut to even sides for yuv420p
    crop: object           # flashhead.media.image.CropInfo

    def paste(self, frames: np.ndarray) -> np.ndarray:
        from flashhead.media.image import paste_back

        return np.stack([paste_back(self.original, f, self.crop) for f in frames])


@dataclass
class GenerationResult:
    path: Path
    seed: int
    duration: float
    timings: dict
    file_size: int
    original_path: Path | None = None   # the paste-back video at the original resolution


class _LRU:
    """A small thread-safe LRU map."""

    def __init__(self, size: int):
        self._size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key: str):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: str, value) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)


class PortraitCache:
    """Portrait work done once per distinct picture, shared by all requests and sessions.

    crops: fetched image bytes -> (512 crop, framing), skipping decode and face detection;
    get:   crop -> the renderer's prepared portrait.
    """

    def __init__(self, renderer: Renderer, size: int = C.PORTRAIT_CACHE_SIZE):
        self._renderer = renderer
        self.crops = _LRU(size)
        self._prepared = _LRU(size)

    def get(self, crop: np.ndarray) -> object:
        key = hashlib.sha256(crop.tobytes()).hexdigest()
        portrait = self._prepared.get(key)
        if portrait is None:
            portrait = self._renderer.prepare(crop, 0)
            self._prepared.put(key, portrait)
        return portrait


@dataclass
class Engines:
    """Heavy shared objects, created once per process."""

    settings: Settings
    renderer: Renderer
    tts: TTSEngine
    portraits: PortraitCache

    @classmethod
    def create(cls, settings: Settings | None = None) -> "Engines":
        from flashhead.render import get_renderer
        from flashhead.speech import get_engine

        settings = settings or get_settings()
        renderer = get_renderer(settings.renderer, weights_dir=settings.weights_dir, device=settings.device)
        renderer.setup()
        return cls(settings, renderer, get_engine(settings), PortraitCache(renderer))


def request_from_input(payload: dict, endpoint: str) -> Request:
    """Validate a raw input dict for an endpoint; raises pydantic.ValidationError."""
    model = FlashHeadAudioRequest if endpoint.rstrip("/").endswith("/audio") else FlashHeadRequest
    return model.model_validate(payload)


def load_portrait(image_ref: str, engines: Engines, *, allow_paths: bool = False
                  ) -> tuple[np.ndarray, Framing]:
    """Fetch, decode and face-crop the portrait -> ((512, 512, 3) uint8 RGB crop, framing)."""
    from flashhead.media.fetch import fetch
    from flashhead.media.image import crop_cover, crop_face, load_image

    s = engines.settings
    data, _ = fetch(image_ref, field="image_url", max_bytes=s.max_image_bytes,
                    timeout=s.fetch_timeout_s, allow=s.fetch_allow, allow_paths=allow_paths)
    key = hashlib.sha256(data + s.reference_crop.encode()).hexdigest()
    cached = engines.portraits.crops.get(key)
    if cached is None:
        original = load_image(data, field="image_url", max_pixels=s.max_image_pixels)
        crop, info = (crop_cover(original) if s.reference_crop == "cover"
                      else crop_face(original, field="image_url"))
        h, w = original.shape[:2]
        cached = (crop, Framing(np.ascontiguousarray(original[: h - h % 2, : w - w % 2]), info))
        if h * w <= CACHE_MAX_PIXELS:   # huge originals are not worth their memory
            engines.portraits.crops.put(key, cached)
    return cached


def load_speech(request: Request, engines: Engines, seed: int, *,
                allow_paths: bool = False) -> Speech:
    if isinstance(request, FlashHeadRequest):
        return engines.tts.synthesize(request.text, request.voice, request.stability, seed)
    from flashhead.media.audio import decode_audio
    from flashhead.media.fetch import fetch

    s = engines.settings
    data, _ = fetch(request.audio_url, field="audio_url", max_bytes=s.max_audio_bytes,
                    timeout=s.fetch_timeout_s, allow=s.fetch_allow, allow_paths=allow_paths)
    return Speech(audio=decode_audio(data, field="audio_url", max_seconds=s.max_audio_seconds))


def pad_to_frames(audio: np.ndarray) -> np.ndarray:
    """Zero-pad so the audio ends on a frame boundary: the end of speech is never cut."""
    n_frames = max(1, math.ceil(len(audio) / C.SAMPLES_PER_FRAME))
    out = np.zeros(n_frames * C.SAMPLES_PER_FRAME, np.float32)
    out[: len(audio)] = audio
    return out


def speech_features(speech: Speech, engines: Engines, *, phones: bool = False) -> FrameFeatures:
    """Per-frame mouth features; for uploads optionally refined with recognised phones.

    Phone recognition costs about 0.1 s per second of audio before the first frame, so the
    offline path uses it (settings.phones_max_seconds bounds it) and streaming does not.
    """
    from flashhead.visemes.features import features_for

    features = features_for(speech)
    max_s = engines.settings.phones_max_seconds
    if phones and speech.phonemes is None and 0 < speech.duration <= max_s:
        from flashhead.speech.recognize import recognize_phones
        from flashhead.visemes.phones import refine_with_phones

        features, confirmed = refine_with_phones(features, recognize_phones(speech.audio))
        speech.meta["confirmed_closures"] = confirmed
    return features


def prepare(request: Request, engines: Engines, *, allow_paths: bool = False,
            keep_framing: bool = False, phones: bool = False) -> Prepared:
    """Fetch and validate every input before any frame is rendered."""

    t0 = time.perf_counter()
    seed = request.seed if request.seed is not None else random.randrange(2**31)
    crop, framing = load_portrait(request.image_url, engines, allow_paths=allow_paths)
    portrait = engines.portraits.get(crop)
    t1 = time.perf_counter()
    speech = load_speech(request, engines, seed, allow_paths=allow_paths)
    speech.audio = pad_to_frames(np.asarray(speech.audio, np.float32))
    t2 = time.perf_counter()
    features = speech_features(speech, engines, phones=phones)
    t3 = time.perf_counter()
    timings = {"inputs": t1 - t0, "tts": t2 - t1, "features": t3 - t2}
    return Prepared(seed, speech, features, portrait, timings, framing if keep_framing else None)


def _aligned_frames(prep: Prepared, engines: Engines, chunk_frames: int,
                    should_cancel: CancelCheck | None) -> Iterator[np.ndarray]:
    """Rendered frames in audio order, with the renderer's latency removed."""
    renderer = engines.renderer
    session = renderer.new_session(prep.portrait, prep.seed)
    skip, produced = renderer.latency_frames, 0
    for start in range(0, prep.n_frames, chunk_frames):
        if should_cancel is not None and should_cancel():
            raise Cancelled("the request was cancelled")
        stop = min(start + chunk_frames, prep.n_frames)
        audio = prep.speech.audio[start * C.SAMPLES_PER_FRAME: stop * C.SAMPLES_PER_FRAME]
        frames = renderer.render(session, SpeechSpan(start, prep.features.slice(start, stop), audio))
        drop = min(skip, len(frames))
        skip -= drop
        produced += len(frames) - drop
        if len(frames) > drop:
            yield frames[drop:]
    if produced < prep.n_frames:
        yield renderer.flush(session)[: prep.n_frames - produced]


def iter_chunks(prep: Prepared, engines: Engines, *, chunk_frames: int = C.CHUNK_FRAMES,
                should_cancel: CancelCheck | None = None) -> Iterator[Chunk]:
    """Render `prep` chunk by chunk; checks for cancellation before every chunk."""
    pending: list[np.ndarray] = []
    n_pending = start = index = 0
    for frames in _aligned_frames(prep, engines, chunk_frames, should_cancel):
        pending.append(frames)
        n_pending += len(frames)
        while n_pending >= chunk_frames or (n_pending and start + n_pending == prep.n_frames):
            block = pending[0] if len(pending) == 1 else np.concatenate(pending)
            take = min(chunk_frames, n_pending)
            pending, n_pending = [block[take:]], n_pending - take
            audio = prep.speech.audio[start * C.SAMPLES_PER_FRAME: (start + take) * C.SAMPLES_PER_FRAME]
            yield Chunk(index, start, block[:take], audio)
            start, index = start + take, index + 1


def rendered_ahead(chunks: Iterator[Chunk], depth: int) -> Iterator[Chunk]:
    """`chunks`, produced in a worker thread up to `depth` chunks ahead of the consumer, so that
    rendering (numpy, OpenCV) and encoding (x264 and AAC, which release the GIL) overlap on two
    cores. The worker's exceptions reach the consumer in order; a consumer that stops early
    (an error, a closed generator) stops the worker, which ends within one chunk."""
    if depth <= 0:
        yield from chunks
        return
    ready: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work() -> None:
        try:
            for chunk in chunks:
                if not put((chunk, None)):
                    return
            put((None, None))
        except BaseException as exc:     # handed to the consumer, raised there
            put((None, exc))
        finally:
            chunks.close()

    worker = threading.Thread(target=work, name="render-ahead", daemon=True)
    worker.start()
    try:
        while True:
            chunk, exc = ready.get()
            if exc is not None:
                raise exc
            if chunk is None:
                return
            yield chunk
    finally:
        stop.set()
        worker.join()


def generate(request: Request, engines: Engines, output_path: str | Path, *,
             allow_paths: bool = False, should_cancel: CancelCheck | None = None,
             log: LogFn | None = None, progress: Callable[[int, int], None] | None = None,
             keep_framing: bool = False) -> GenerationResult:
    """Render `request` to an MP4 at `output_path`.

    keep_framing: also write `<stem>_original.mp4`, the animated face pasted back into the
    full original picture at its own resolution.
    """
    log = log or (lambda _m: None)
    t0 = time.perf_counter()
    log("fetching and validating inputs")
    prep = prepare(request, engines, allow_paths=allow_paths, keep_framing=keep_framing, phones=True)
    log(f"speech ready: {prep.duration:.2f} s, {prep.n_frames} frames, seed {prep.seed}")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    original_path = output_path.with_name(output_path.stem + "_original.mp4") if keep_framing else None
    render_s, encode_s = _encode(prep, engines, output_path, original_path, should_cancel, progress)
    timings = {"tts": prep.timings["tts"], "features": prep.timings["features"],
               "inputs": prep.timings["inputs"], "render": render_s, "encode": encode_s,
               "total": time.perf_counter() - t0}
    log(f"rendered {prep.n_frames} frames in {timings['total']:.2f} s")
    return GenerationResult(output_path, prep.seed, prep.duration, timings,
                            output_path.stat().st_size, original_path)


def _encode(prep: Prepared, engines: Engines, path: Path, original_path: Path | None,
            should_cancel: CancelCheck | None, progress) -> tuple[float, float]:
    """Consume the chunks into the MP4 (and the paste-back MP4); -> (render s, encode s), where
    render s is the time spent waiting for rendered chunks (rendering that encoding did not hide)."""
    from contextlib import ExitStack

    from flashhead.video.encode import Mp4Writer

    render_s = encode_s = 0.0
    with ExitStack() as stack:
        writer = stack.enter_context(Mp4Writer(path))
        framed = None
        if original_path is not None and prep.framing is not None:
            h, w = prep.framing.original.shape[:2]
            framed = stack.enter_context(Mp4Writer(original_path, size=(w, h)))
        t_prev = time.perf_counter()
        # cancellation is asked here, not in the render thread: a job store's connection is per thread
        for chunk in rendered_ahead(iter_chunks(prep, engines), engines.settings.render_ahead_chunks):
            if should_cancel is not None and should_cancel():
                raise Cancelled("the request was cancelled")
            t_rendered = time.perf_counter()
            writer.write(chunk.frames, chunk.audio)
            if framed is not None:
                framed.write(prep.framing.paste(chunk.frames), chunk.audio)
            t_prev, render_s = time.perf_counter(), render_s + (t_rendered - t_prev)
            encode_s += t_prev - t_rendered
            if progress:
                progress(chunk.start_frame + len(chunk.frames), prep.n_frames)
    return render_s, encode_s


def result_json(result: GenerationResult, url: str, file_name: str | None = None) -> dict:
    """The seed's output shape for a finished generation."""
    return {
        "video": {"url": url, "content_type": "video/mp4",
                  "file_name": file_name or result.path.name, "file_size": result.file_size},
        "seed": result.seed,
        "duration": round(result.duration, 3),
        "timings": {k: round(v, 4) for k, v in result.timings.items()},
    }
