"""Real-time session capacity of one render engine, through a real `flashhead serve` (API process
+ engine process + one queue worker) on loopback; prints JSON.

    .venv/bin/python bench/sessions.py [--max-sessions 16] [--seconds 8] [--runs 10]

1. sustained: the largest n for which n concurrent paced live sessions (real-time PCM16 speech
   in over the realtime WebSocket, fMP4 chunks out) all stay ahead of their media clock: chunk i
   arrives before a0 + lead + (start_i - start_0), a0 the first chunk's arrival;
2. time to first chunk (SSE /stream, 12-word text) p50/p95 while half that many live sessions run;
3. queue status p50/p99 while `sustained` live sessions run;
0. first, the server's CPU seconds per rendered media second over --cpu-sessions live sessions
   (API process + engine + render processes): on a loaded machine the real-time count moves with
   the other load, this does much less; cores / it is the capacity of an idle machine.
The engine's capacity is set to --max-sessions so that admission never refuses here. The
machine's load average is printed with the figures: on a shared machine they move with it. Each
live run also prints `client_cores`: the cores this script's own clients used meanwhile (on a
small machine they compete with the server).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import httpx
import msgpack
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TEXT = "Good morning, here is a quick update about the weather for today."   # 12 words
LEAD_S = 0.32
PACKET = 1280                    # 40 ms of PCM16 at 16 kHz


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, capacity: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "FLASHHEAD_ENGINE_CAPACITY": str(capacity), "FLASHHEAD_ENGINE_KEY_SESSIONS": str(capacity),
           "FLASHHEAD_TTS": "espeak", "FLASHHEAD_RENDERER": "cpu", "FLASHHEAD_FETCH_ALLOW": "127.0.0.1"}
    proc = subprocess.Popen([sys.executable, "-m", "flashhead", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--data-dir", str(data_dir), "--no-auth"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not start")


def report(proc: subprocess.Popen, out: dict) -> None:
    """Stops the server; prints `out` with the load average after."""
    proc.terminate()
    proc.wait(15)
    out["load_average_after"] = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps(out, indent=2))


def pct(values: list[float], *qs: int) -> dict:
    a = np.array(values) * 1000
    return {**{f"p{q}_ms": round(float(np.percentile(a, q)), 1) for q in qs}, "n": len(values)}


class Live(threading.Thread):
    """A paced live session fed real-time speech until `stop`; records each chunk's lateness."""

    def __init__(self, base: str, image: str, pcm: bytes, stop: threading.Event):
        super().__init__(daemon=True)
        self.base, self.image, self.pcm, self.stop = base, image, pcm, stop
        self.late: list[float] = []
        self.media_s = 0.0
        self.error: str | None = None

    def run(self) -> None:
        from websockets.sync.client import connect

        try:
            with connect(self.base.replace("http", "ws", 1) + "/fal-ai/flashhead/realtime", max_size=None) as ws:
                ws.send(msgpack.packb({"type": "start", "image_url": self.image, "pace": True}, use_bin_type=True))
                started = ws.recv()
                if isinstance(started, str):
                    raise RuntimeError(started)
                threading.Thread(target=self._feed, args=(ws,), daemon=True).start()
                first = None
                while not self.stop.is_set():
                    msg = msgpack.unpackb(ws.recv(), raw=False)
                    now = time.monotonic()
                    if msg.get("type") != "chunk":
                        continue
                    first = first or (now, msg["start"])
                    self.media_s += msg["duration"]
                    self.late.append(now - (first[0] + LEAD_S + msg["start"] - first[1]))
        except Exception as exc:  # noqa: BLE001 - reported in the JSON
            self.error = f"{type(exc).__name__}: {exc}"

    def _feed(self, ws) -> None:
        t0 = time.monotonic()
        try:
            for k, i in enumerate(range(0, len(self.pcm), PACKET)):
                if self.stop.is_set():
                    return
                time.sleep(max(0.0, t0 + k * 0.04 - time.monotonic()))
                ws.send(msgpack.packb({"type": "audio", "pcm": self.pcm[i:i + PACKET]}, use_bin_type=True))
            ws.send(msgpack.packb({"type": "end_of_speech"}, use_bin_type=True))
        except Exception:  # noqa: BLE001 - the socket closed at the end of the run
            pass


def tree_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the process `pid` and its live descendants,
    by role: the API process ("api") and each child by its module (`python -m <module>`)."""
    import psutil

    root = psutil.Process(pid)
    by_role: dict[str, float] = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            t, cmd = p.cpu_times(), p.cmdline()
        except psutil.NoSuchProcess:
            continue
        role = "api" if p.pid == pid else (cmd[cmd.index("-m") + 1] if "-m" in cmd else cmd[-1])
        by_role[role] = by_role.get(role, 0.0) + t.user + t.system
    return by_role


def cpu_per_media_s(pid: int, base: str, image: str, pcm: bytes, n: int, seconds: float) -> dict:
    """The server's CPU seconds (API + engine + its render processes) per media second rendered,
    over `n` live sessions: capacity on an idle machine is about cores / that."""
    stop = threading.Event()
    sessions = [Live(base, image, pcm, stop) for _ in range(n)]
    for s in sessions:
        s.start()
    deadline = time.monotonic() + 60                 # past start-up: every session has a chunk
    while not all(s.media_s > 0 or s.error for s in sessions) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    cpu0, media0 = tree_cpu_s(pid), sum(s.media_s for s in sessions)
    time.sleep(seconds)
    cpu1, media1 = tree_cpu_s(pid), sum(s.media_s for s in sessions)
    stop.set()
    for s in sessions:
        s.join(30)
    media = max(media1 - media0, 1e-9)
    by_role = {k: round((v - cpu0.get(k, 0.0)) / media, 3) for k, v in cpu1.items()}
    per = sum(cpu1.values()) - sum(cpu0.values())
    per /= media
    cores = len(os.sched_getaffinity(0))
    return {"sessions": n, "media_s": round(media, 2), "expected_media_s": n * seconds,
            "cpu_s_per_media_s_by_process": by_role,
            "cpu_s_per_media_s": round(per, 3), "capacity_from_cpu": round(cores / per, 1),
            "errors": [s.error for s in sessions if s.error]}


def run_sessions(base: str, image: str, pcm: bytes, n: int, seconds: float, during=None):
    stop = threading.Event()
    sessions = [Live(base, image, pcm, stop) for _ in range(n)]
    t0, cpu0 = time.monotonic(), time.process_time()
    for s in sessions:
        s.start()
    extra = during(seconds) if during else None
    if not during:
        time.sleep(seconds)
    stop.set()
    for s in sessions:
        s.join(30)
    client_cores = (time.process_time() - cpu0) / (time.monotonic() - t0)
    late = [x for s in sessions for x in s.late]
    errors = [s.error for s in sessions if s.error]
    return {"sessions": n, "chunks": len(late), "max_lateness_ms": round(max(late) * 1000, 1) if late else None,
            "all_ahead": bool(late) and max(late) <= 0 and not errors, "errors": errors,
            "client_cores": round(client_cores, 2)}, extra


def ttfc_sse(base: str, image: str) -> float:
    t = time.perf_counter()
    first = None
    with httpx.stream("POST", f"{base}/fal-ai/flashhead/stream", json={"image_url": image, "text": TEXT},
                      timeout=120) as r:
        for line in r.iter_lines():      # to the end, so that runs do not overlap
            if first is None and line.startswith("data:"):
                first = time.perf_counter() - t
    return first


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-sessions", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--cpu-sessions", type=int, default=4, help="live sessions for the CPU-per-media-second figure")
    ap.add_argument("--cpu-only", action="store_true", help="only the CPU-per-media-second figure")
    args = ap.parse_args()
    image = "data:image/png;base64," + base64.b64encode((ROOT / "examples/portrait_girl_512.png").read_bytes()).decode()
    with wave.open(str(ROOT / "examples" / "speech_excerpt_10s.wav")) as w:
        pcm = w.readframes(w.getnframes())
    proc, base = start_server(Path(tempfile.mkdtemp(prefix="flashhead-bench-")), args.max_sessions)
    out = {"cores": os.cpu_count(), "load_average_before": [round(x, 1) for x in os.getloadavg()]}
    try:
        ttfc_sse(base, image)            # warm-up: portrait cache, TTS
        out["cpu"] = cpu_per_media_s(proc.pid, base, image, pcm, args.cpu_sessions, args.seconds)
        if args.cpu_only:
            return 0
        runs, sustained = [], 0
        for n in range(1, args.max_sessions + 1):
            r, _ = run_sessions(base, image, pcm, n, args.seconds)
            runs.append(r)
            if not r["all_ahead"]:
                break
            sustained = n
        out["live"] = {"sustained_real_time": sustained, "runs": runs, "seconds_each": args.seconds}
        half = max(1, sustained // 2)
        _, ttfc = run_sessions(base, image, pcm, half, 0,
                               during=lambda _s: [ttfc_sse(base, image) for _ in range(args.runs)])
        out["ttfc_sse_at_half_capacity"] = {"live_sessions": half, **pct(ttfc, 50, 95)}
        job = httpx.post(f"{base}/queue/fal-ai/flashhead", json={"image_url": image, "text": "Hi."}).json()

        def polls(seconds: float) -> list[float]:
            times, end = [], time.monotonic() + seconds
            with httpx.Client(base_url=base) as c:
                while time.monotonic() < end:
                    t = time.perf_counter()
                    c.get(f"/queue/fal-ai/flashhead/requests/{job['request_id']}/status")
                    times.append(time.perf_counter() - t)
                    time.sleep(0.01)
            return times

        full, status = run_sessions(base, image, pcm, max(1, sustained), args.seconds, during=polls)
        out["status_at_full_load"] = {"live_sessions": max(1, sustained), "all_ahead": full["all_ahead"],
                                      **pct(status, 50, 99)}
    finally:
        report(proc, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
