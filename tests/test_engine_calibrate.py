"""Capacity calibration at the engine's start (engine_capacity_mode=calibrate): measured, shown in
/health and /metrics, and what admission enforces; configured capacity stays the default."""
from __future__ import annotations

import math
import time

import pytest
from fal_client.client import RealtimeError

from api_helpers import fal_sync_client, tls_server
from flashhead import constants as C
from flashhead.config import Settings
from flashhead.engine.process import capacity_of
from test_engine_server import image

pytestmark = pytest.mark.slow      # a real server whose engine calibrates; the renderer in-process

HEADROOM = 0.1                     # -> one session per render process on any machine this runs on


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from tls_server(tmp_path_factory, "calibrate", {
        "FLASHHEAD_ENGINE_CAPACITY_MODE": "calibrate", "FLASHHEAD_ENGINE_PROCESSES": "2",
        "FLASHHEAD_ENGINE_CALIBRATION_HEADROOM": str(HEADROOM), "FLASHHEAD_ENGINE_CAPACITY": "8"})


def test_calibration_measures_real_time_sessions_from_rendered_chunks():
    from flashhead.config import Settings
    from flashhead.engine.calibrate import calibrate
    from flashhead.pipeline import Engines

    engines = Engines.create(Settings(renderer="cpu", tts="espeak"))
    t = time.perf_counter()
    found = calibrate(engines, headroom=1.0, chunks=4)
    wall = time.perf_counter() - t
    assert found["chunk_media_s"] == pytest.approx(C.LIVE_CHUNK_FRAMES / C.FPS)
    assert 4 * found["step_s"] < wall                           # the timed chunks are part of the run
    assert found["cpu_step_s"] > 0.005                          # a chunk of 8 frames is real work
    assert found["real_time"] == pytest.approx(found["chunk_media_s"] / found["step_s"], rel=0.01)
    assert found["capacity"] == max(1, math.floor(found["real_time"]))
    half = calibrate(engines, headroom=0.5, chunks=4)
    assert half["capacity"] == max(1, math.floor(half["real_time"] * 0.5))


def test_the_calibrated_capacity_is_shown_and_enforced(server):
    with server.client() as c:
        engine = c.get("/health").json()["engine"]
        metrics = c.get("/metrics").text
    runs = engine["calibration"]
    print(f"\ncalibration: {runs}")
    assert engine["capacity_source"] == "calibrated" and len(runs) == 2     # one per render process
    assert all(r["step_s"] > 0 and r["cpu_step_s"] > 0 and r["chunks"] >= 4 for r in runs)
    expected = sum(max(1, math.floor(r["real_time"] * HEADROOM)) for r in runs)
    assert engine["capacity"] == expected != capacity_of(Settings(renderer="cpu"))   # not the configured one
    assert f"flashhead_engine_capacity {float(expected)}" in metrics
    assert "flashhead_engine_capacity_calibrated 1.0" in metrics
    step = [float(line.split()[1]) for line in metrics.splitlines()
            if line.startswith("flashhead_engine_calibration_step_seconds ")]
    assert step and step[0] == pytest.approx(sum(r["step_s"] for r in runs) / len(runs), rel=0.01)
    client = fal_sync_client(server)
    held = [client.realtime(C.TEXT_ENDPOINT, use_jwt=False) for _ in range(expected)]
    try:
        for h in held:
            conn = h.__enter__()
            conn.send({"type": "start", "image_url": image(), "pace": True})
            assert conn.recv()["type"] == "started"
        with client.realtime(C.TEXT_ENDPOINT, use_jwt=False) as conn:
            conn.send({"type": "start", "image_url": image()})
            with pytest.raises(RealtimeError) as refused:
                conn.recv()
        assert refused.value.error == "CAPACITY_EXCEEDED"
    finally:
        for h in held:
            h.__exit__(None, None, None)
