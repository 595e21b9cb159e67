"""Batched neural steps (tiny CPU weights): sessions due together step as one batch, and each
session's frames equal what it gives alone."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from flashhead import constants as C
from flashhead.engine.scheduler import Scheduler
from flashhead.render.base import SpeechSpan
from flashhead.visemes.base import FrameFeatures

from lazy_imports import lazy_import

neural_renderer = lazy_import("flashhead.render.neural.renderer")

PORTRAIT = np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)
CHUNK = 24                  # Lite: new frames per chunk
SESSIONS = 4


def speech(n_frames: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n_frames * C.SAMPLES_PER_FRAME) * 0.1).astype(np.float32)


def span(i: int, chunk: int) -> SpeechSpan:
    return SpeechSpan(chunk * CHUNK, FrameFeatures.zeros(CHUNK), speech(CHUNK, 100 * i + chunk))


class ChunkTask:
    """A scheduler task: one renderer chunk per step (what a live session's step does)."""

    live = False

    def __init__(self, renderer: neural_renderer.NeuralRenderer, i: int, chunks: int):
        self.renderer, self.i, self.chunks = renderer, i, chunks
        self.session = renderer.new_session(renderer.prepare(PORTRAIT, 0), seed=10 + i)
        self.frames: list[np.ndarray] = []
        self.done = False

    def key(self, now):
        return (0, 0.0)

    def ready(self, now):
        return not self.done

    def step(self):
        self.frames.append(self.renderer.render(self.session, span(self.i, len(self.frames))))
        self.done = len(self.frames) == self.chunks
        return []

    def close(self):
        pass


def alone(r: neural_renderer.NeuralRenderer, i: int, chunks: int) -> np.ndarray:
    session = r.new_session(r.prepare(PORTRAIT, 0), seed=10 + i)
    out = np.concatenate([r.render(session, span(i, c)) for c in range(chunks)])
    assert list(r.batcher.sizes)[-chunks:] == [1] * chunks     # a lone caller is neither batched nor held
    return out


@pytest.mark.slow
def test_sessions_due_together_step_in_one_batch_and_match_alone():
    r = neural_renderer.NeuralRenderer.tiny("lite", size=32, batch_max=16, batch_window_s=5.0)
    calls = []
    real_step = r.engine.step

    def spy(states, audio):
        calls.append(len(states))
        return real_step(states, audio)

    r.engine.step = spy
    chunks = 2                      # chunk 0 (one motion latent), then one with two
    tasks = [ChunkTask(r, i, chunks) for i in range(SESSIONS)]
    sched = Scheduler(SESSIONS, lambda *a: None, batcher=r.batcher)
    for i, t in enumerate(tasks):
        sched.add(str(i), t)
    threading.Thread(target=sched.run, daemon=True).start()
    deadline = time.monotonic() + 60
    while sched.active and time.monotonic() < deadline:
        time.sleep(0.02)
    sched.stop()
    assert sched.active == 0
    # every step of every session ran in a batch of 4 (chunk 0 and the later ones apart)
    assert calls == [SESSIONS] * chunks and list(r.batcher.sizes) == calls
    outs = [np.concatenate(t.frames) for t in tasks]
    single = neural_renderer.NeuralRenderer.tiny("lite", size=32)
    for i, out in enumerate(outs):
        ref = alone(single, i, chunks)
        assert out.shape == ref.shape == (chunks * CHUNK, C.SIZE, C.SIZE, 3)
        diff = np.abs(out.astype(int) - ref.astype(int))      # float rounding: a few pixels, 1-2 levels
        assert diff.max() <= 2 and (diff > 0).mean() < 1e-3, f"session {i}: {diff.max()} {(diff > 0).mean()}"
    lat = r.latency_frames
    assert not np.array_equal(outs[0][lat:], outs[1][lat:])          # sessions differ from each other


def test_engine_heartbeat_reports_batch_sizes_to_metrics(tmp_path):
    import socket
    from multiprocessing.connection import Connection
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry

    from flashhead.config import Settings
    from flashhead.engine.process import Engine
    from flashhead.engine.service import EngineService
    from flashhead.render.neural.batch import StepBatcher

    batcher = StepBatcher(16, 0.05)
    batcher.sizes.extend([4, 4, 1])
    ours, theirs = socket.socketpair()
    settings = Settings(data_dir=tmp_path)
    engine = Engine(Connection(theirs.detach()), SimpleNamespace(renderer=SimpleNamespace(batcher=batcher)),
                    None, settings)
    beat = engine.beat()
    assert beat["batches"] == [4, 4, 1] and engine.beat()["batches"] == []      # each batch reported once
    registry = CollectorRegistry()
    EngineService(settings, registry)._beat(beat)
    assert registry.get_sample_value("flashhead_engine_batch_size_count") == 3
    assert registry.get_sample_value("flashhead_engine_batch_size_bucket", {"le": "2.0"}) == 1
    ours.close()


@pytest.mark.slow
def test_streams_through_the_engine_step_in_batches(engines, tmp_path):
    """4 /stream sessions opened together on the engine (tiny neural renderer): their chunk steps
    run batched, and each stream completes. How many share each batch depends on when each
    stream's prepare (TTS, portrait) ends, which a loaded machine spreads out (seen: [1, 1, 3, 3]);
    the exact batch-of-4 per step is asserted through the scheduler above."""
    import asyncio
    import base64

    from api_helpers import PORTRAIT
    from flashhead.config import Settings
    from flashhead.engine.process import EngineThread
    from flashhead.jobs.backends import make_storage
    from flashhead.pipeline import Engines, PortraitCache

    settings = Settings(data_dir=tmp_path, renderer="flashhead-lite", tts="espeak", engine_threads=SESSIONS)
    r = neural_renderer.NeuralRenderer.tiny("lite", size=32, batch_window_s=5.0)
    sizes: list[int] = []
    runner = EngineThread(Engines(settings, r, engines.tts, PortraitCache(r)), make_storage(settings), settings,
                          on_beat=lambda beat: sizes.extend(beat["batches"]))
    runner.wait_ready(60)
    image = "data:image/png;base64," + base64.b64encode(PORTRAIT.read_bytes()).decode()

    async def stream(seed: int) -> list[str]:
        channel = runner.link.open("stream", {"payload": {"image_url": image, "text": "Hello there.", "seed": seed},
                                              "endpoint": "fal-ai/flashhead", "base_url": "http://127.0.0.1:9",
                                              "segments": "bytes"})
        kinds = []
        while not kinds or kinds[-1] not in ("end", "error"):
            kinds.append((await asyncio.wait_for(channel.get(), 60))[0])
        return kinds

    async def all_streams():
        return await asyncio.gather(*(stream(i) for i in range(SESSIONS)))

    try:
        results = asyncio.run(all_streams())
        time.sleep(1.0)                                  # the last heartbeat
    finally:
        runner.stop()
    assert all(k[-1] == "end" and k.count("event") > 2 for k in results), results
    assert sizes and max(sizes) > 1, sizes
