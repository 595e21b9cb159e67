"""Soak: N concurrent clients on loopback for a while against a real `flashhead serve` (CPU
renderer, one render worker process), mixing queue submits with a webhook (a loopback receiver),
status polls, SSE /stream renders, realtime live sessions and uploads. Prints one JSON object:
error rate, p50/p99 latency per operation, server RSS (the API process and its children) and
open file descriptors at the start, middle and end, webhook deliveries, load average.

    python bench/soak.py --minutes 10 --clients 20

RSS "start" is read after --warmup seconds of the same load (caches, the renderer, the encoder
and the thread pools have reached their size by then) and "end" after the load, both once the server has
rested --settle seconds (longer than FLASHHEAD_HEAP_TRIM_S, so freed heap went back to the OS);
"middle" is read under load; "idle" before any load. Growth is end vs start. --malloc-arena-max N starts the server with MALLOC_ARENA_MAX=N (allocator study).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import queue_load  # noqa: E402  (bench/ is not a package)
from queue_load import free_port, pct  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "examples" / "portrait_girl_512.png"
ENDPOINT = "fal-ai/flashhead"
TEXT = "Hi there."
WEIGHTS = {"status": 35, "upload": 20, "submit": 15, "stream": 15, "realtime": 15}
MAX_OUTSTANDING_JOBS = 3          # submits wait while this many queue jobs are unfinished
OP_TIMEOUT_S = 180.0
SPEECH_S = 0.64                   # audio pushed per live session
SAMPLE_RATE = 16000
SESSION_ROOM = 64                 # engine capacity and per-key sessions for the soak server (> clients)


def start_server(data_dir: Path, port: int, arena_max: int | None, extra_env: dict) -> subprocess.Popen:
    # Room for every client's stream or live session at once: the soak measures the server under
    # the whole mix, not admission (refusals past capacity are tested in tests/test_engine_server.py).
    env = {"FLASHHEAD_FETCH_ALLOW": "127.0.0.1,localhost", "FLASHHEAD_ENGINE_CAPACITY": str(SESSION_ROOM),
           "FLASHHEAD_ENGINE_KEY_SESSIONS": str(SESSION_ROOM), **extra_env}
    if arena_max:
        env["MALLOC_ARENA_MAX"] = str(arena_max)
    return queue_load.start_server(data_dir, port, 1, env)


def footprint(pid: int) -> dict:
    """RSS (MB) and open file descriptors of a process and all its children."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    rss = fds = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
        except psutil.NoSuchProcess:
            pass
    return {"rss_mb": round(rss / 2 ** 20, 1), "api_rss_mb": round(procs[0].memory_info().rss / 2 ** 20, 1),
            "fds": fds, "processes": len(procs), "t": round(time.monotonic(), 1)}


# ---- the webhook receiver ----------------------------------------------------------------------

class Hooks:
    def __init__(self):
        self.received: dict[str, int] = defaultdict(int)
        self.bad: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                outer.received[body.get("request_id", "?")] += 1
                if body.get("status") != "OK":
                    outer.bad.append(json.dumps(body)[:300])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"


# ---- operations ----------------------------------------------------------------------------------

class Soak:
    def __init__(self, base: str, hooks: Hooks, portrait_url: str):
        self.base, self.hooks, self.portrait_url = base, hooks, portrait_url
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.jobs: list[str] = []
        self.outstanding = 0
        self.speech = _pcm(SPEECH_S)

    async def op_status(self, http: httpx.AsyncClient) -> None:
        r = await http.get(f"/queue/{ENDPOINT}/requests/{random.choice(self.jobs)}/status")
        _expect(r.status_code in (200, 202), r)

    async def op_upload(self, http: httpx.AsyncClient) -> None:
        data = os.urandom(random.randint(10_000, 200_000))
        r = await http.post("/cdn/files/upload", content=data, headers={"content-type": "application/octet-stream"})
        _expect(r.status_code == 200, r)
        back = await http.get(r.json()["access_url"])
        _expect(back.content == data, back)

    async def op_submit(self, http: httpx.AsyncClient) -> None:
        r = await http.post(f"/queue/{ENDPOINT}", params={"fal_webhook": self.hooks.url},
                            json={"image_url": self.portrait_url, "text": TEXT})
        _expect(r.status_code == 200, r)
        self.jobs.append(r.json()["request_id"])
        self.outstanding += 1
        asyncio.get_running_loop().create_task(self._follow(http, r.json()["request_id"]))

    async def _follow(self, http: httpx.AsyncClient, rid: str) -> None:
        """Wait for the job (SSE status stream), then check its result (not timed as an op)."""
        try:
            async with http.stream("GET", f"/queue/{ENDPOINT}/requests/{rid}/status/stream") as s:
                async for _ in s.aiter_lines():
                    pass
            r = await http.get(f"/queue/{ENDPOINT}/requests/{rid}")
            if r.status_code != 200 or "video" not in r.json():
                self.errors["job"].append(f"{rid}: {r.status_code} {r.text[:200]}")
        except Exception as exc:  # noqa: BLE001
            self.errors["job"].append(f"{rid}: {type(exc).__name__}: {exc}")
        finally:
            self.outstanding -= 1

    async def op_stream(self, http: httpx.AsyncClient) -> None:
        last = None
        async with http.stream("POST", f"/{ENDPOINT}/stream", json={"image_url": self.portrait_url,
                                                                   "text": TEXT}) as s:
            if s.status_code != 200:
                await s.aread()            # the error body, for the report
            _expect(s.status_code == 200, s)
            async for line in s.aiter_lines():
                if line.startswith("data:"):
                    last = json.loads(line[5:])
        if not last or "video" not in last:
            raise RuntimeError(f"stream ended without the output: {str(last)[:200]}")

    async def op_realtime(self, http: httpx.AsyncClient) -> None:
        import msgpack
        from websockets.asyncio.client import connect

        url = self.base.replace("http://", "ws://") + f"/{ENDPOINT}/audio/realtime"
        async with connect(url, max_size=None) as ws:
            await ws.send(msgpack.packb({"type": "start", "image_url": self.portrait_url, "pace": False}))
            assert (await _recv(ws))["type"] == "started"
            step = SAMPLE_RATE * 2 // 10                       # 100 ms of PCM16
            for i in range(0, len(self.speech), step):
                await ws.send(msgpack.packb({"type": "audio", "pcm": self.speech[i:i + step]}))
            await ws.send(msgpack.packb({"type": "end_of_speech"}))
            spoke = False
            while True:
                m = await _recv(ws)
                spoke = spoke or bool(m.get("speaking"))
                if spoke and m.get("type") == "chunk" and not m.get("speaking"):
                    break
            await ws.send(msgpack.packb({"type": "stop"}))
            while (await _recv(ws)).get("type") != "stopped":
                pass

    async def client(self, http: httpx.AsyncClient, stop_at: float) -> None:
        ops, weights = zip(*WEIGHTS.items())
        while time.monotonic() < stop_at:
            name = random.choices(ops, weights)[0]
            if name == "submit" and self.outstanding >= MAX_OUTSTANDING_JOBS:
                name = "status"                    # the render worker is busy enough
            if name == "status" and not self.jobs:
                name = "upload"
            await self.run_op(http, name)
            await asyncio.sleep(random.uniform(0.05, 0.3))

    async def run_op(self, http: httpx.AsyncClient, name: str) -> None:
        t = time.monotonic()
        try:
            await asyncio.wait_for(getattr(self, f"op_{name}")(http), OP_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - every failure counts as an error
            self.errors[name].append(f"{type(exc).__name__}: {str(exc)[:200]}")
        self.latency[name].append(time.monotonic() - t)


async def _recv(ws) -> dict:
    import msgpack

    m = await asyncio.wait_for(ws.recv(), 60)
    if isinstance(m, str):
        raise RuntimeError(f"realtime error: {m[:200]}")
    return msgpack.unpackb(m, raw=False)


def _expect(ok: bool, r) -> None:
    if not ok:
        raise RuntimeError(f"HTTP {r.status_code}: {getattr(r, 'text', '')[:200]}")


def _pcm(seconds: float) -> bytes:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave_ = 0.3 * np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return (wave_ * 32767).astype("<i2").tobytes()


# ---- the run --------------------------------------------------------------------------------------

async def soak(base: str, pid: int, clients: int, seconds: float, settle_s: float = 12.0,
               warmup_s: float = 10.0) -> dict:
    hooks = Hooks()
    idle = footprint(pid)
    async with httpx.AsyncClient(base_url=base, timeout=OP_TIMEOUT_S) as http:
        up = await http.post("/cdn/files/upload", content=PORTRAIT.read_bytes(), headers={"content-type": "image/png"})
    s = Soak(base, hooks, up.json()["access_url"])
    await _phase(s, clients, warmup_s)               # thread pools and caches reach their size
    warm_errors = {k: list(v) for k, v in s.errors.items()}
    s.latency.clear()
    s.errors.clear()
    await asyncio.sleep(settle_s)
    marks = {"idle": idle, "start": footprint(pid)}
    load_start = os.getloadavg()
    t0 = time.monotonic()

    async def middle():
        await asyncio.sleep(seconds / 2)
        marks["middle"] = footprint(pid)

    await asyncio.gather(middle(), _phase(s, clients, seconds))
    elapsed = time.monotonic() - t0
    load_end = os.getloadavg()
    await asyncio.sleep(settle_s)                      # sessions closed, connections closed, idle
    marks["end"] = footprint(pid)
    for _ in range(100):                               # the last webhooks
        if all(hooks.received.get(j) for j in s.jobs):
            break
        await asyncio.sleep(0.2)
    return _report(s, hooks, marks, clients, elapsed, warm_errors, (load_start, load_end))


async def _phase(s: Soak, clients: int, seconds: float) -> None:
    """`clients` clients for `seconds` on their own connections, then every job finished and
    the connections closed."""
    limits = httpx.Limits(max_connections=clients * 3, max_keepalive_connections=clients * 3)
    async with httpx.AsyncClient(base_url=s.base, timeout=OP_TIMEOUT_S, limits=limits) as http:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(s.client(http, stop_at) for _ in range(clients)))
        await _drain(s)


def _report(s: Soak, hooks: Hooks, marks: dict, clients: int, elapsed: float, warm_errors: dict,
            load: tuple) -> dict:
    ops = {k: len(v) for k, v in s.latency.items()}
    n_errors = sum(len(v) for v in s.errors.values())
    missing = [j for j in s.jobs if not hooks.received.get(j)]
    dupes = [j for j in s.jobs if hooks.received.get(j, 0) > 1]
    n_errors += len(missing) + len(dupes) + len(hooks.bad)
    start, end = marks["start"]["rss_mb"], marks["end"]["rss_mb"]
    return {
        "clients": clients, "seconds": round(elapsed, 1), "ops": ops, "errors": n_errors,
        "error_rate": round(n_errors / max(1, sum(ops.values())), 5),
        "error_samples": {k: v[:3] for k, v in s.errors.items()}, "warmup_errors": warm_errors,
        "p50_ms": {k: pct(v, 0.5) for k, v in s.latency.items()},
        "p99_ms": {k: pct(v, 0.99) for k, v in s.latency.items()},
        "jobs": len(s.jobs), "webhooks": {"missing": len(missing), "duplicates": len(dupes), "bad": hooks.bad[:3]},
        "footprint": marks, "rss_growth": round((end - start) / start, 4),
        "fds_growth": marks["end"]["fds"] - marks["start"]["fds"],
        "load_avg": {"start": load[0], "end": load[1]}, "cpus": os.cpu_count(),
    }


async def _drain(s: Soak, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while s.outstanding and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


def run(minutes: float, clients: int, arena_max: int | None = None, data_dir: Path | None = None,
        settle_s: float = 12.0, warmup_s: float = 10.0, env: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="flashhead-soak-") as tmp:
        data = Path(data_dir or tmp)
        data.mkdir(parents=True, exist_ok=True)
        port = free_port()
        proc = start_server(data, port, arena_max, env or {})
        try:
            out = asyncio.run(soak(f"http://127.0.0.1:{port}", proc.pid, clients, minutes * 60, settle_s,
                                   warmup_s))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        out["malloc_arena_max"] = arena_max
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--malloc-arena-max", type=int, default=None)
    p.add_argument("--data-dir", type=Path, default=None, help="keep the server's data here")
    p.add_argument("--settle", type=float, default=12.0, help="rest (s) before the start and end RSS")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds of load before the start RSS")
    p.add_argument("--base-url", default=None, help="soak a server that is already running (with --pid)")
    p.add_argument("--pid", type=int, default=None, help="that server's process id (for RSS and fds)")
    a = p.parse_args()
    if a.base_url:
        out = asyncio.run(soak(a.base_url.rstrip("/"), a.pid, a.clients, a.minutes * 60, a.settle, a.warmup))
    else:
        out = run(a.minutes, a.clients, a.malloc_arena_max, a.data_dir, a.settle, a.warmup)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
