"""Full-size FlashHead Lite on the CPU with random weights: one whole chunk, timed.

Proves the full-size path runs end to end without a GPU: builds the released Lite shapes (DiT
1.53 B parameters, LTX-Video VAE, wav2vec2-base) with random weights, then runs one chunk:
reference encode (33 frames), wav2vec2 over the 8 s buffer, the 4-step DiT, VAE decode, Lab colour
correction and the motion re-encode (last 9 frames). Writes the 24 new frames as PNGs and prints
one JSON document with the wall time of each part and the peak RSS. Frames are noise-like
(random weights): this measures the path, not the picture.

    python bench/neural_cpu_smoke.py --out out/neural_smoke                # float32
    python bench/neural_cpu_smoke.py --dtype bfloat16 --threads 2
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flashhead import constants as C  # noqa: E402
from flashhead.render.neural.tiny import (build_random_engine, build_tiny_engine, synthetic_portrait,  # noqa: E402
                                          synthetic_speech)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20      # Linux: KiB


def portrait(size: int) -> np.ndarray:
    path = Path(__file__).resolve().parents[1] / "examples" / "portrait_girl_512.png"
    if not path.is_file():
        return synthetic_portrait(size)
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGB").resize((size, size)))


class Clock:
    def __init__(self) -> None:
        self.parts: dict[str, float] = {}

    def __call__(self, name: str, fn):
        t = time.perf_counter()
        out = fn()
        self.parts[name] = round(time.perf_counter() - t, 2)
        print(f"{name}: {self.parts[name]} s (peak RSS {peak_rss_gib():.2f} GiB)", file=sys.stderr, flush=True)
        return out


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    clock = Clock()
    dtype = DTYPES[args.dtype]
    if args.tiny:
        engine = clock("build", lambda: build_tiny_engine("lite", size=64))
    else:
        engine = clock("build", lambda: build_random_engine("lite", "cpu", dtype))
    v = engine.variant
    with torch.inference_mode():
        ref = clock("reference_encode", lambda: engine.prepare(portrait(engine.size)))
        state = engine.new_stream(ref, seed=1)
        windows = clock("wav2vec2", lambda: state.audio.push(synthetic_speech(v.new_frames * C.SAMPLES_PER_FRAME))[None])
        steps = []
        forward = engine.dit.forward

        def timed_forward(*a, **kw):
            t = time.perf_counter()
            out = forward(*a, **kw)
            steps.append(round(time.perf_counter() - t, 2))
            return out

        engine.dit.forward = timed_forward
        latents = clock("dit_4_steps", lambda: engine.denoise([state], windows))
        engine.dit.forward = forward
        frames = clock("decode_colour_motion_reencode", lambda: engine.finish([state], latents))[0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(out / f"frame_{i:02d}.png")
    total = sum(t for k, t in clock.parts.items() if k != "build")
    return {"variant": "lite", "full_size": not args.tiny, "dtype": args.dtype, "threads": args.threads,
            "seconds": clock.parts, "dit_step_s": steps, "chunk_s_excluding_build": round(total, 2),
            "frames": list(frames.shape), "finite": bool(np.isfinite(latents.float().numpy()).all()),
            "motion_latents": list(state.motion.shape), "peak_rss_gib": round(peak_rss_gib(), 2),
            "frames_dir": str(out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="out/neural_cpu_smoke")
    ap.add_argument("--tiny", action="store_true", help="tiny models (seconds): checks the script itself")
    args = ap.parse_args(argv)
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
