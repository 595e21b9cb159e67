"""GPU benchmark of the neural FlashHead renderer (full-size Lite and Pro, random bf16 weights).

Speed does not depend on weight values, so models are built on the meta device, materialised
with to_empty() on the GPU and filled with a fast fan-in-scaled random init. For each variant it
runs a matrix of (mode, batch) tasks, modes eager | compile (torch.compile of every DiT block) |
cudagraphs (compile with mode="reduce-overhead"), batches 1, 2, 4, 8 sessions per chunk, in an
order that gets the most useful figures first; tasks that would run past --budget are listed as
skipped. Per task: end-to-end fps (wav2vec2 over the 8 s buffer + 4-step DiT + VAE decode + Lab
colour correction + motion re-encode), DiT-only fps, per-session fps, whether every session of
the batch is real time (>= 25 fps), the first chunk cold (with compilation) and a new session's
first chunk on the warm engine (portrait preparation included), peak GPU memory. Prints one
JSON document (and each task's line on stderr as it finishes).

    python bench/gpu_neural.py --budget 480     # both variants on one H100/H200, < 8 minutes
    python bench/gpu_neural.py --tiny           # CPU smoke run with tiny random models

On a bare GPU machine with torch and transformers only, carry wheels for the rest of what the
engine imports (diffusers; pydantic-settings, scipy, psutil through flashhead.render's package
imports), fetched here for the GPU machine's Python version:
    pip download diffusers==0.42.1 pydantic-settings scipy psutil -d bench/wheels \
        --only-binary=:all: --python-version 3.11
and pass --wheels bench/wheels: whatever is missing is installed from there (--no-index) first.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flashhead import constants as C  # noqa: E402

if TYPE_CHECKING:
    from flashhead.render.neural.stream import ChunkEngine
# flashhead.render.neural needs CARRIED packages: imported after ensure_wheels() (see main)

T0 = time.perf_counter()


# import name -> distribution: what the engine needs beyond torch, transformers and numpy
CARRIED = {"diffusers": "diffusers", "pydantic_settings": "pydantic-settings", "scipy": "scipy",
           "psutil": "psutil"}


def ensure_wheels(wheels: str | None) -> None:
    """Install the carried wheels of whatever in CARRIED this machine lacks."""
    import importlib.util
    missing = [dist for mod, dist in CARRIED.items() if importlib.util.find_spec(mod) is None]
    if not missing:
        return
    if not wheels:
        raise SystemExit(f"missing {', '.join(missing)}: pass --wheels DIR holding their wheels")
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", wheels, *missing],
                   check=True)


def build(variant: str, args) -> ChunkEngine:
    from flashhead.render.neural.tiny import build_random_engine, build_tiny_engine
    if args.tiny:
        return build_tiny_engine(variant, size=64)
    engine = build_random_engine(variant, "cuda", torch.bfloat16)
    if args.rope_fp32:
        engine.dit.rope_dtype = torch.float32
    if args.compile_vae:
        engine.vae.model.decode = torch.compile(engine.vae.model.decode, dynamic=False)
    return engine


@contextlib.contextmanager
def dit_mode(engine: ChunkEngine, mode: str):
    """eager | compile | cudagraphs: the DiT blocks swapped for compiled wrappers, then restored."""
    if mode == "eager":
        yield
        return
    eager = engine.dit.blocks
    kind = "reduce-overhead" if mode == "cudagraphs" else None
    engine.dit.blocks = torch.nn.ModuleList(torch.compile(b, mode=kind, dynamic=False) for b in eager)
    try:
        yield
    finally:
        engine.dit.blocks = eager


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def attention_context(kind: str):
    if kind == "auto" or not torch.cuda.is_available():
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "math": SDPBackend.MATH}[kind]
    return sdpa_kernel(backend)


def task_order(modes: list[str], batches: list[int]) -> list[tuple[str, int]]:
    """Eager at every batch, then each other mode at the smallest and largest batch, then the rest."""
    first = [("eager", b) for b in batches] if "eager" in modes else []
    ends = sorted({batches[0], batches[-1]})
    other = [m for m in modes if m != "eager"]
    return first + [(m, b) for b in ends for m in other] + [(m, b) for m in other for b in batches
                                                            if b not in ends]


def run_task(engine: ChunkEngine, mode: str, batch: int, args) -> dict:
    from flashhead.render.neural.tiny import synthetic_portrait, synthetic_speech
    res: dict = {"mode": mode, "batch": batch}
    cuda = torch.cuda.is_available() and not args.tiny
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    v = engine.variant
    piece = v.new_frames * C.SAMPLES_PER_FRAME
    img = synthetic_portrait(engine.size)
    audio = lambda k: [synthetic_speech(piece, k + i) for i in range(batch)]  # noqa: E731
    with dit_mode(engine, mode):
        portrait = engine.prepare(img)
        states = [engine.new_stream(portrait, seed) for seed in range(batch)]
        _, res["first_chunk_cold_s"] = timed(lambda: engine.step(states, audio(0)))   # with compilation
        for k in range(args.warmup):
            engine.step(states, audio(k + 1))
        windows = torch.stack([s.audio.windows() for s in states])
        dit = [timed(lambda: engine.denoise(states, windows))[1] for _ in range(args.chunks)]
        e2e = [timed(lambda k=k: engine.step(states, audio(k)))[1] for k in range(args.chunks)]

        def first_chunk_of_a_new_session():
            fresh = engine.new_stream(engine.prepare(img), 99)
            return engine.step([fresh], [synthetic_speech(piece, 99)])

        _, res["time_to_first_chunk_s"] = timed(first_chunk_of_a_new_session)
    res["dit_fps"] = v.new_frames * batch / float(np.median(dit))
    res["e2e_chunk_s"] = float(np.median(e2e))
    res["e2e_fps"] = v.new_frames * batch / res["e2e_chunk_s"]
    res["per_session_fps"] = res["e2e_fps"] / batch
    res["all_sessions_real_time"] = res["per_session_fps"] >= C.FPS
    if cuda:
        res["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


# Rough cost of a task before it starts (seconds), to keep inside the budget.
ESTIMATE_S = {"eager": 15.0, "compile": 90.0, "cudagraphs": 120.0}


def bench_variant(variant: str, args, deadline: float) -> dict:
    out: dict = {"tasks": [], "skipped": []}
    engine, out["build_s"] = timed(lambda: build(variant, args))
    if torch.cuda.is_available() and not args.tiny:
        out["weights_gib"] = torch.cuda.memory_allocated() / 2**30
    estimate = {m: (1.0 if args.tiny else s) for m, s in ESTIMATE_S.items()}
    for mode, batch in task_order(args.modes.split(","), [int(b) for b in args.batches.split(",")]):
        if time.perf_counter() + estimate[mode] > deadline:
            out["skipped"].append(f"{mode} batch {batch}: time budget")
            continue
        try:
            with attention_context(args.attn), torch.inference_mode():
                res = run_task(engine, mode, batch, args)
        except Exception as exc:  # noqa: BLE001 - report and keep the other figures
            res = {"mode": mode, "batch": batch, "error": f"{type(exc).__name__}: {exc}"}
        out["tasks"].append(res)
        print(json.dumps({variant: res}), file=sys.stderr, flush=True)
    ok = [t for t in out["tasks"] if "e2e_fps" in t]
    real_time = [t["batch"] for t in ok if t["all_sessions_real_time"]]
    out["best_e2e_fps"] = max((t["e2e_fps"] for t in ok), default=None)
    out["max_real_time_sessions"] = max(real_time, default=0)
    del engine
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run with tiny random models")
    ap.add_argument("--variants", default="lite,pro")
    ap.add_argument("--modes", default="eager,compile,cudagraphs")
    ap.add_argument("--batches", default="1,2,4,8", help="sessions batched into one chunk")
    ap.add_argument("--chunks", type=int, default=4, help="timed chunks per measurement")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--compile-vae", action="store_true")
    ap.add_argument("--attn", choices=["auto", "flash", "efficient", "math"], default="auto")
    ap.add_argument("--rope-fp32", action="store_true", help="rotate in fp32 instead of float64")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run")
    ap.add_argument("--wheels", default=None, help="folder of wheels for a bare machine (see above)")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device; use --tiny for a CPU smoke run"}))
        return 2
    ensure_wheels(args.wheels)
    if not args.tiny:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = {"device": torch.cuda.get_device_name() if not args.tiny else "cpu (tiny models)",
           "torch": torch.__version__, "flags": vars(args), "variants": {}}
    variants = args.variants.split(",")
    for i, variant in enumerate(variants):
        left = args.budget - (time.perf_counter() - T0)
        deadline = time.perf_counter() + left / (len(variants) - i)      # an even share of what is left
        try:
            out["variants"][variant] = bench_variant(variant, args, deadline)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory while building
            out["variants"][variant] = {"error": f"{type(exc).__name__}: {exc}"}
    out["total_s"] = time.perf_counter() - T0
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
