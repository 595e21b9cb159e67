"""Queue load: submit/status latency (p50/p99) with N concurrent clients, and jobs completed per
minute, against a real flashhead server this script starts on loopback (CPU renderer, real
rendering running the whole time, in the server's render worker process). Prints one JSON object.

    python bench/queue_load.py --clients 50 --duration 60

The load generator runs on the same CPUs as the server, so it should cost little: by default
each client is one keep-alive connection on bare asyncio streams (--client httpx measures with
httpx.AsyncClient instead, which spends more CPU per request than the server does).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ENDPOINT = "fal-ai/flashhead"
TEXT = "Hello there."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, workers: int, extra_env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "FLASHHEAD_TTS": "espeak", "FLASHHEAD_RENDERER": "cpu", **(extra_env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "flashhead.api.server", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--data-dir", str(data_dir), "--workers", str(workers),
                             "--no-auth"],
                            env=env, stdout=open(data_dir / "server.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start; see {data_dir / 'server.log'}")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)


class RawHttp:
    """One keep-alive HTTP/1.1 connection per simulated client, on bare asyncio streams: the load
    generator shares the CPUs with the server it measures, and httpx.AsyncClient costs several
    times the server's own CPU per request (see --client httpx), which then shows up as latency."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        try:
            self.writer.write(head.encode() + data)
            status = int((await self.reader.readline()).split()[1])
            length = 0
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            payload = await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
            await self.close()
            raise
        return status, json.loads(payload) if payload else {}

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


class HttpxHttp:
    def __init__(self, client: httpx.AsyncClient):
        self.c = client

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        r = await self.c.request(method, path, json=body)
        return r.status_code, r.json()

    async def close(self) -> None:
        pass


async def client_loop(http, body: dict, stop_at: float, stats: dict) -> None:
    try:
        while time.monotonic() < stop_at:
            try:
                await one_job(http, body, stop_at, stats)
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                stats["errors"].append(type(exc).__name__)    # counted, not fatal
    finally:
        await http.close()


async def one_job(http, body: dict, stop_at: float, stats: dict) -> None:
    t = time.perf_counter()
    _, r = await http.request("POST", f"/queue/{ENDPOINT}", body)
    stats["submit"].append(time.perf_counter() - t)
    rid = r["request_id"]
    stats["ids"].append(rid)
    while time.monotonic() < stop_at:
        t = time.perf_counter()
        code, _ = await http.request("GET", f"/queue/{ENDPOINT}/requests/{rid}/status")
        stats["status"].append(time.perf_counter() - t)
        if code == 200:
            stats["completed"] += 1
            break
        await asyncio.sleep(0.1)


async def run(base: str, clients: int, duration: float, data_uri: bool, client: str = "raw") -> dict:
    portrait = (ROOT / "examples" / "portrait_girl_512.png").read_bytes()
    if data_uri:
        image = "data:image/png;base64," + base64.b64encode(portrait).decode()
    else:   # what fal clients do: upload once, then pass the URL
        image = httpx.post(f"{base}/cdn/files/upload", content=portrait,
                           headers={"Content-Type": "image/png", "X-Fal-File-Name": "p.png"}).json()["access_url"]
    body = {"image_url": image, "text": TEXT}
    stats = {"submit": [], "status": [], "ids": [], "completed": 0, "errors": []}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    host, port = base.split("://", 1)[1].rsplit(":", 1)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as c:
        https = [RawHttp(host, int(port)) if client == "raw" else HttpxHttp(c) for _ in range(clients)]
        t0 = time.monotonic()
        await asyncio.gather(*(client_loop(h, body, t0 + duration, stats) for h in https))
        elapsed = time.monotonic() - t0
        for rid in stats["ids"]:          # leave nothing queued behind
            try:
                await c.put(f"/queue/{ENDPOINT}/requests/{rid}/cancel")
            except httpx.HTTPError:
                pass
    return {"clients": clients, "client": client, "duration_s": round(elapsed, 1),
            "submits": len(stats["submit"]), "status_requests": len(stats["status"]),
            "submit_ms": {"p50": pct(stats["submit"], 0.5), "p99": pct(stats["submit"], 0.99)},
            "status_ms": {"p50": pct(stats["status"], 0.5), "p99": pct(stats["status"], 0.99)},
            "jobs_completed": stats["completed"], "transport_errors": len(stats["errors"]),
            "jobs_per_minute": round(stats["completed"] / elapsed * 60, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    p.add_argument("--workers", type=int, default=1, help="render workers in the server")
    p.add_argument("--data-uri", action="store_true", help="send the portrait inline in every submit")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw",
                   help="raw: keep-alive connections on asyncio streams (cheap); httpx: httpx.AsyncClient")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="flashhead-bench-") as tmp:
        port = free_port()
        proc = start_server(Path(tmp), port, a.workers)
        try:
            out = asyncio.run(run(f"http://127.0.0.1:{port}", a.clients, a.duration, a.data_uri, a.client))
        finally:
            alive = proc.poll() is None
            proc.terminate()
            proc.wait(timeout=30)
    out.update(server_survived=alive, image="data URI" if a.data_uri else "uploaded URL",
               loadavg_1m=round(os.getloadavg()[0], 2), workers=a.workers, text=TEXT, cpu_count=os.cpu_count())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
