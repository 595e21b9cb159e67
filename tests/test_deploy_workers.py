"""Several machines: an API node that renders nothing (`flashhead serve --no-worker`) and render
worker nodes (`flashhead worker`) sharing a real redis-server and an S3-protocol server (moto),
driven by the unmodified fal-client. SIGKILL of the worker node running a job: its lease runs
out, the API node re-queues the job, and another worker node completes it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api_helpers import (AUDIO_ENDPOINT, PORTRAIT, ROOT, TEXT_ENDPOINT, Server, WebhookReceiver, data_uri,
                         fal_sync_client, is_running, make_tls, probe_video, worker_processes)
from flashhead.cli import build_parser
from test_deploy_redis import _rendering, _wait, s3  # noqa: F401  (s3: the moto S3 fixture)

LEASE_S = 3                    # FLASHHEAD_JOB_LEASE_S: a dead node's job is re-queued after this


class WorkerNode:
    """`flashhead worker --job-store ... --storage s3 --data-dir D` as its own process."""

    def __init__(self, data_dir: Path, env: dict, job_store: str):
        self.data_dir, self.env, self.job_store = data_dir, env, job_store
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerNode":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FLASHHEAD_FETCH_ALLOW": "127.0.0.1,localhost,::1", "FLASHHEAD_TTS": "espeak",
               "PYTHONUNBUFFERED": "1", **self.env}
        log = open(self.data_dir / "worker.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "flashhead", "worker", "--data-dir", str(self.data_dir),
                                      "--workers", "1", "--job-store", self.job_store, "--storage", "s3",
                                      "--renderer", "cpu"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=ROOT)
        self.log_path = Path(log.name)
        return self

    def render_processes(self) -> list[int]:
        return worker_processes(self.proc.pid)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def test_serve_no_worker_is_an_api_node():
    assert build_parser().parse_args(["serve", "--no-worker"]).workers == 0


def _readme_commands(after: str) -> list[list[str]]:
    """The flashhead commands of the README's first bash block after `after`, as argv lists."""
    import shlex

    block = (ROOT / "README.md").read_text().split(after, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [ln for ln in block.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")]
    return [shlex.split(ln)[1:] for ln in lines if ln.startswith(".venv/bin/flashhead ")]


def test_the_readme_shows_api_nodes_and_gpu_workers_as_separate_commands():
    """Each command of the README's API-node / GPU-worker block parses with the real CLI (an
    unknown or misspelt flag exits 2), and says what the section promises."""
    api, worker = [build_parser().parse_args(argv) for argv in
                   _readme_commands("API nodes and GPU workers can also be separate machines")]
    assert (api.func.__name__, api.workers, api.host) == ("cmd_serve", 0, "0.0.0.0")
    assert worker.func.__name__ == "cmd_worker" and worker.job_store.startswith("redis://")
    assert (worker.storage, worker.renderer, worker.device) == ("s3", "flashhead-lite", "cuda:0")
    assert worker.weights_dir and worker.workers >= 1


@pytest.mark.parametrize("command", [["worker"], ["serve", "--no-worker"]])
@pytest.mark.slow
def test_worker_and_api_nodes_need_the_shared_job_store_and_storage(command, tmp_path):
    bare = {k: v for k, v in os.environ.items() if not k.startswith("FLASHHEAD_")}
    run = lambda env: subprocess.run([sys.executable, "-m", "flashhead", *command, "--data-dir", str(tmp_path)],  # noqa: E731
                                     capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    out = run(bare)
    assert out.returncode == 2 and "--job-store redis://" in out.stderr, out.stderr
    out = run({**bare, "FLASHHEAD_JOB_STORE": "redis://127.0.0.1:9/0"})
    assert out.returncode == 2 and "--storage s3" in out.stderr, out.stderr


@pytest.mark.slow
def test_api_node_and_worker_nodes_sigkill_requeues_to_another_worker(redis_url, s3, tmp_path):
    env = {"FLASHHEAD_JOB_STORE": redis_url, "FLASHHEAD_REDIS_PREFIX": f"nodes{time.monotonic_ns()}:",
           "FLASHHEAD_JOB_LEASE_S": str(LEASE_S), **s3.server_env("shared", prefix="nodes/")}
    api = Server(tmp_path / "api", make_tls(tmp_path / "tls"), env=env, workers=0)   # --workers 0 = --no-worker
    nodes = [WorkerNode(tmp_path / name, env, redis_url) for name in ("a", "b")]
    with WebhookReceiver() as hooks:
        try:
            _run(api, nodes, hooks)
        finally:
            for node in nodes:
                if node.proc is not None:
                    node.stop()
            api.stop()


def _run(api: Server, nodes: list[WorkerNode], hooks: WebhookReceiver) -> None:
    import fal_client

    api.start()
    assert worker_processes(api.proc.pid) == []                                    # renders nothing
    assert worker_processes(api.proc.pid, b"flashhead.engine.process") == []
    fal = fal_sync_client(api)
    image = fal.upload_file(PORTRAIT)                                              # into S3
    with api.client() as c:      # streams need an engine node; none yet: refused at once, not hung
        r = c.post(f"/{TEXT_ENDPOINT}/stream", json={"image_url": image, "text": "Hi."})
    assert r.status_code == 429 and r.json()["error_type"] == "capacity_exceeded", r.text
    waiting = fal.submit(TEXT_ENDPOINT, {"image_url": image, "text": "Hello there.", "seed": 1},
                         webhook_url=hooks.url)
    time.sleep(1.0)
    assert isinstance(waiting.status(), fal_client.Queued)                        # nobody renders yet
    nodes[0].start()
    status = _wait(lambda: _completed(waiting), what="first job done on worker node a")
    assert status.error is None and waiting.get()["seed"] == 1
    assert not any(e["message"].startswith("re-queued") for e in status.logs)    # node a held its lease
    _wait(lambda: hooks.received, timeout=30, what="webhook sent by the API node")

    audio = data_uri(ROOT / "examples" / "speech_excerpt_10s.wav", "audio/wav")
    job = fal.submit(AUDIO_ENDPOINT, {"image_url": image, "audio_url": audio, "seed": 2})
    _wait(lambda: _rendering(job), what="job rendering on worker node a")
    children = nodes[0].render_processes()
    assert children
    nodes[0].kill()                                                                # the machine dies
    _wait(lambda: not any(is_running(pid) for pid in children), timeout=10, what="render process gone")
    nodes[1].start()
    done = _wait(lambda: _completed(job), timeout=180, what="job done on worker node b")
    messages = [e["message"] for e in done.logs]
    assert done.error is None and any(m.startswith("re-queued") for m in messages), messages
    video = job.get()["video"]
    with api.client() as c:
        info = probe_video(c.get(video["url"]).content)
    assert info["width"] == 512 and info["audio"]


def _completed(handle):
    import fal_client
    s = handle.status(with_logs=True)
    return s if isinstance(s, fal_client.Completed) else None


@pytest.mark.slow
def test_a_job_whose_worker_node_dies_twice_fails_with_worker_crashed(redis_url, s3, tmp_path):
    """As on one machine (flashhead.jobs.queue: re-run once, then failed, since it would most
    likely crash the next worker too): a queue job whose worker node is SIGKILLed while it
    renders is re-queued and taken by the next node; when that one dies too, it ends FAILED
    with worker_crashed, and no node runs it a third time."""
    import fal_client

    env = {"FLASHHEAD_JOB_STORE": redis_url, "FLASHHEAD_REDIS_PREFIX": f"twice{time.monotonic_ns()}:",
           "FLASHHEAD_JOB_LEASE_S": str(LEASE_S), **s3.server_env("shared", prefix="twice/")}
    api = Server(tmp_path / "api", make_tls(tmp_path / "tls"), env=env, workers=0)
    nodes = [WorkerNode(tmp_path / name, env, redis_url) for name in ("a", "b")]
    try:
        api.start()
        fal = fal_sync_client(api)
        audio = data_uri(ROOT / "examples" / "speech_excerpt_10s.wav", "audio/wav")
        job = fal.submit(AUDIO_ENDPOINT, {"image_url": fal.upload_file(PORTRAIT), "audio_url": audio, "seed": 4})
        for attempt, node in enumerate(nodes, 1):
            node.start()
            _wait(lambda: _rendering_attempt(job, attempt), what=f"attempt {attempt} rendering")
            node.kill()                                                    # the machine dies mid-render
            if attempt == 1:
                _wait(lambda: isinstance(job.status(), fal_client.Queued), timeout=30, what="job re-queued")
        done = _wait(lambda: _completed(job), timeout=30, what="the job failed after its second run")
    finally:
        for node in nodes:
            if node.proc is not None:
                node.stop()
        api.stop()
    messages = [e["message"] for e in done.logs]
    assert done.error_type == "worker_crashed" and "stopped while this request was running" in done.error, done
    assert sum(m.startswith("re-queued") for m in messages) == 1, messages


def _rendering_attempt(handle, attempt: int) -> bool:
    """In progress, re-queued attempt - 1 times, with a chunk rendered since the last re-queue."""
    import fal_client
    s = handle.status(with_logs=True)
    logs = s.logs if isinstance(s, fal_client.InProgress) else []
    requeues = [i for i, e in enumerate(logs) if e["message"].startswith("re-queued")]
    since = requeues[-1] + 1 if requeues else 0
    return len(requeues) == attempt - 1 and any(e["message"].startswith("rendered ") for e in logs[since:])
