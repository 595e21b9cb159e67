"""Queue jobs through the render engine, behind a real `flashhead serve` (API process, engine
with its pool of render processes, one worker process): the worker keeps the job but the engine
renders it, and an engine killed under a job hands the job back to the queue once."""
from __future__ import annotations

import os
import signal
import time

import pytest

from api_helpers import PORTRAIT, data_uri, probe_video, tls_server, wait_terminal, worker_processes
from flashhead import constants as C
from test_api_fal_client import _long_wav
from test_api_restart import _wait_rendering
from test_engine_pool import POOL, cpu_ticks
from test_engine_server import engine_pid

pytestmark = pytest.mark.slow      # a real server; jobs of 30 s of speech


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from tls_server(tmp_path_factory, "jobs", {"FLASHHEAD_ENGINE_PROCESSES": "2"})


def submit_long(c, tmp_path) -> str:
    body = {"image_url": data_uri(PORTRAIT, "image/png"), "audio_url": data_uri(_long_wav(tmp_path), "audio/wav")}
    r = c.post(f"/queue/{C.AUDIO_ENDPOINT}", json=body)
    assert r.status_code == 200, r.text
    return r.json()["request_id"]


def finished_video(c, rid: str, timeout: float = 240) -> tuple[dict, dict]:
    status = wait_terminal(c, rid, timeout)
    assert status.get("error") is None, status
    result = c.get(f"/queue/{C.TEXT_ENDPOINT}/requests/{rid}").json()
    assert "video" in result, result
    return status, probe_video(c.get(result["video"]["url"]).content)


def test_the_engine_renders_queue_jobs_the_worker_only_waits(server, tmp_path):
    with server.client() as c:
        rid = submit_long(c, tmp_path)
        _wait_rendering(c, rid)
        [worker] = worker_processes(server.proc.pid)
        renderers = worker_processes(engine_pid(server), POOL)
        w0, r0 = cpu_ticks(worker), sum(cpu_ticks(p) for p in renderers)
        time.sleep(3.0)
        w1, r1 = cpu_ticks(worker), sum(cpu_ticks(p) for p in renderers)
        _, video = finished_video(c, rid)
    print(f"\nCPU ticks over 3 s of a job: render processes {r1 - r0}, worker {w1 - w0}; "
          f"load {os.getloadavg()[0]:.1f}")
    assert video["frames"] >= 30 * C.FPS and video["audio"], video
    assert r1 - r0 >= 50                                      # the engine renders (>= 0.5 s CPU in 3 s)
    assert w1 - w0 <= (r1 - r0) / 10, (w1 - w0, r1 - r0)      # the worker does not


def test_an_engine_killed_under_a_job_hands_it_back_once(server, tmp_path):
    with server.client() as c:
        rid = submit_long(c, tmp_path)
        _wait_rendering(c, rid)
        os.kill(engine_pid(server), signal.SIGKILL)
        status, video = finished_video(c, rid)
    log = [e["message"] for e in status["logs"]]
    assert any(m.startswith("re-queued") for m in log) and "started (attempt 2)" in log, log
    assert video["frames"] >= 30 * C.FPS, video
