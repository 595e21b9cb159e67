"""Time to first chunk of a live session whose portrait another running session already uses,
with the CPU engine's pool of render processes (a real `flashhead serve`, loopback); prints JSON.

    .venv/bin/python bench/repeat_portrait.py [--trials 8]

Each trial takes a portrait no render process has seen yet (the example portrait with one pixel
changed: other bytes, another cache entry), opens a realtime session on it and keeps it open,
then opens a second session on the same portrait and times it: `start` sent -> `started` (the
portrait fetched, face-cropped and prepared, or found in its render process's cache) and -> its
first chunk. Both then close. First, a session on each of two other portraits at once warms
both render processes (face detector, first encoder). Run it with PYTHONPATH pointing at the
code to compare (the server is `python -m flashhead serve` with that environment).
The machine's load average is printed with the figures: on a shared machine they move with it.
"""
from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import msgpack
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sessions import ROOT, pct, report, start_server  # noqa: E402  (bench/ on the path first)


def portrait(i: int) -> str:
    """The example portrait with pixel (0, 0) set from `i`, as a PNG data URI."""
    img = np.array(Image.open(ROOT / "examples" / "portrait_girl_512.png").convert("RGB"))
    img[0, 0] = (i % 256, i // 256 % 256, 7)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def open_session(stack: ExitStack, base: str, image: str) -> tuple[float, float]:
    """A realtime session on `image`, closed with `stack` -> (seconds to `started`, to its first chunk)."""
    from websockets.sync.client import connect

    ws = stack.enter_context(connect(base.replace("http", "ws", 1) + "/fal-ai/flashhead/realtime", max_size=None))
    t = time.perf_counter()
    ws.send(msgpack.packb({"type": "start", "image_url": image, "pace": True}, use_bin_type=True))
    started = ws.recv(timeout=120)
    if isinstance(started, str):
        raise RuntimeError(started)
    started_s = time.perf_counter() - t
    while msgpack.unpackb(ws.recv(timeout=60), raw=False).get("type") != "chunk":
        pass
    return started_s, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    args = ap.parse_args()
    proc, base = start_server(Path(tempfile.mkdtemp(prefix="flashhead-bench-")), 4)
    out = {"cores": os.cpu_count(), "load_average_before": [round(x, 1) for x in os.getloadavg()]}
    started, first = [], []
    try:
        with ExitStack() as stack:
            for k in range(2):
                open_session(stack, base, portrait(60000 + k))
        time.sleep(1.0)
        for i in range(args.trials):
            with ExitStack() as stack:
                open_session(stack, base, portrait(i))              # the holder, open meanwhile
                s, f = open_session(stack, base, portrait(i))
            started.append(s)
            first.append(f)
            time.sleep(1.0)                 # both closed in the engine before the next trial
        out["repeat_portrait"] = {"started": pct(started, 50, 95), "first_chunk": pct(first, 50, 95)}
    finally:
        report(proc, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
