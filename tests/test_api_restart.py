"""Crash recovery: SIGKILL the server while jobs are queued and running, start it again on the
same data dir; every job reaches a terminal state, none is lost, finished files stay.

Policy: a job that was running is re-queued once; if the server dies under it again it fails
with error_type "worker_crashed".
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from api_helpers import (PORTRAIT, TEXT_ENDPOINT, Server, WebhookReceiver, data_uri, free_port, is_running,
                         make_tls, wait_terminal, worker_processes)
from test_api_fal_client import _long_wav

pytestmark = pytest.mark.slow      # crash tests (SIGKILLed servers and workers); not in `make test-fast`

Q = f"/queue/{TEXT_ENDPOINT}"


def _submit(c, endpoint, body, **params):
    r = c.post(f"/queue/{endpoint}", json=body, params=params)
    assert r.status_code == 200, r.text
    return r.json()["request_id"]


def _wait_rendering(c, rid, attempt=1, timeout=120):
    """Until attempt `attempt` of `rid` has rendered a chunk: a "rendered" line after its
    "started (attempt N)" line (a re-queued job's log still holds the earlier attempt's lines)."""
    deadline = time.monotonic() + timeout
    mark = f"started (attempt {attempt})"
    while time.monotonic() < deadline:
        s = c.get(f"{Q}/requests/{rid}/status", params={"logs": 1}).json()
        log = [e["message"] for e in s["logs"]]
        if s["status"] == "IN_PROGRESS" and mark in log and \
                any(m.startswith("rendered ") for m in log[log.index(mark):]):
            return
        time.sleep(0.05)
    raise AssertionError(f"attempt {attempt} of {rid} never started rendering")


def _wait_gone(pids, timeout=10):
    deadline = time.monotonic() + timeout
    while any(is_running(p) for p in pids):
        assert time.monotonic() < deadline, f"worker processes {pids} outlived the server"
        time.sleep(0.05)


def test_jobs_survive_sigkill(tmp_path):
    portrait = data_uri(PORTRAIT, "image/png")
    text = {"image_url": portrait, "text": "Hello there."}
    long = {"image_url": portrait, "audio_url": data_uri(_long_wav(tmp_path), "audio/wav")}
    hook_port = free_port()
    server = Server(tmp_path / "data", make_tls(tmp_path / "tls"),
                    env={"FLASHHEAD_WEBHOOK_MAX_TRIES": "8", "FLASHHEAD_WEBHOOK_RETRY_WINDOW_S": "20"})
    server.start()
    try:
        with server.client() as c:
            early = _submit(c, TEXT_ENDPOINT, text)
            early_video = wait_terminal(c, early) and c.get(f"{Q}/requests/{early}").json()["video"]["url"]
            twice = _submit(c, "fal-ai/flashhead/audio", long)         # will be killed twice
            waiting = [_submit(c, TEXT_ENDPOINT, text, fal_webhook=f"http://127.0.0.1:{hook_port}/h")
                       for _ in range(2)]
            _wait_rendering(c, twice)
            assert c.get("/health").json()["workers"] == {"mode": "process", "count": 1}
        workers = worker_processes(server.proc.pid)
        assert len(workers) == 1                       # it renders in a worker process, not in the server
        server.kill()
        _wait_gone(workers)                            # the worker died with the server: no orphan renders on

        server.start()                                                   # restart 1: re-queued
        with server.client() as c:
            s = c.get(f"{Q}/requests/{twice}/status", params={"logs": 1}).json()
            assert s["status"] in ("IN_QUEUE", "IN_PROGRESS")
            _wait_rendering(c, twice, attempt=2)
            log = [e["message"] for e in c.get(f"{Q}/requests/{twice}/status", params={"logs": 1}).json()["logs"]]
            assert any(m.startswith("re-queued") for m in log) and "started (attempt 2)" in log
        server.kill()

        with WebhookReceiver(hook_port) as receiver:                     # the receiver was down until now
            server.start()                                               # restart 2: fails for good
            with server.client() as c:
                crashed = wait_terminal(c, twice)
                assert crashed["status"] == "COMPLETED" and crashed["error_type"] == "worker_crashed"
                assert c.get(f"{Q}/requests/{twice}").json()["error_type"] == "worker_crashed"
                for rid in waiting:
                    assert wait_terminal(c, rid).get("error") is None
                    assert c.get(c.get(f"{Q}/requests/{rid}").json()["video"]["url"]).status_code == 200
                r = c.get(early_video, headers={"Range": "bytes=0-99"})        # files from before the crashes
                assert r.status_code == 206 and len(r.content) == 100
            deadline = time.monotonic() + 60
            while len({json.loads(b)["request_id"] for _, b in receiver.received}) < 2:
                assert time.monotonic() < deadline, "webhooks not delivered"
                time.sleep(0.1)
            workers = worker_processes(server.proc.pid)
        server.stop()                                  # a graceful stop ends the workers too
        _wait_gone(workers)
        assert {json.loads(b)["request_id"] for _, b in receiver.received} == set(waiting)
    finally:
        server.kill()                              # a failed check must not leave it rendering on


def test_a_worker_process_that_dies_fails_its_job_and_is_replaced(tmp_path):
    """OOM killer or a native crash in one render worker: the server lives on, the job it was
    running fails with worker_crashed (it is not retried: it would likely crash the next one)."""
    portrait = data_uri(PORTRAIT, "image/png")
    long = {"image_url": portrait, "audio_url": data_uri(_long_wav(tmp_path), "audio/wav")}
    server = Server(tmp_path / "data", make_tls(tmp_path / "tls")).start()
    try:
        with server.client() as c:
            victim = _submit(c, "fal-ai/flashhead/audio", long)
            _wait_rendering(c, victim)
            [worker] = worker_processes(server.proc.pid)
            os.kill(worker, signal.SIGKILL)
            crashed = wait_terminal(c, victim)
            assert crashed["error_type"] == "worker_crashed", crashed
            assert any("worker process died" in e["message"] for e in crashed["logs"])
            os.kill(server.proc.pid, signal.SIGUSR1)      # an operator asks for the stacks: logged,
            deadline = time.monotonic() + 10              # and the server goes on (the job below)
            while "most recent call first" not in server.log_tail(100_000):
                assert time.monotonic() < deadline, "SIGUSR1 wrote no stacks to the log"
                time.sleep(0.1)
            after = wait_terminal(c, _submit(c, TEXT_ENDPOINT, {"image_url": portrait, "text": "Hi."}))
            assert after.get("error") is None, after
            assert worker_processes(server.proc.pid) not in ([], [worker])
    finally:
        server.stop()
