"""GPU benchmark of the neural FlashHead renderer (full-size Lite and Pro, random bf16 weights).

Speed does not depend on weight values, so models are built on the meta device, materialised
with to_empty() on the GPU and filled with a fast fan-in-scaled random init. Reports per variant:
DiT-only fps, end-to-end fps (wav2vec2 over the 8 s buffer + 4-step DiT + VAE decode + Lab colour
correction + motion re-encode), time to the first chunk (cold, with compilation; and warm, with
portrait preparation), peak GPU memory. Prints one JSON document.

    python bench/gpu_neural.py                  # both variants, one H100, < 8 minutes
    python bench/gpu_neural.py --tiny           # CPU smoke run with tiny random models (seconds)
Flags: --compile none|blocks|full, --cuda-graphs, --compile-vae, --attn auto|flash|efficient|math,
       --batch N (sessions batched per chunk), --overlap (two session groups: one group's DiT
       runs on one CUDA stream while the other's VAE decode/re-encode runs on another),
       --rope-fp32, --chunks N, --budget SECONDS (parts beyond it are skipped, JSON still printed).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flashhead import constants as C  # noqa: E402
from flashhead.render.neural.audio import AudioEncoder  # noqa: E402
from flashhead.render.neural.dit import VARIANT_CONFIGS, FlashHeadDiT  # noqa: E402
from flashhead.render.neural.stream import VARIANTS, ChunkEngine  # noqa: E402

T0 = time.perf_counter()


@torch.no_grad()
def fast_init_(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights in place on the module's device: N(0, 1/fan_in) matrices, norms 1, biases 0."""
    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            fan_in = math.prod(p.shape[1:])
            p.normal_(0, 1 / math.sqrt(fan_in), generator=gen)
        elif name.endswith(("bias", "beta")):
            p.zero_()
        else:
            p.fill_(1.0)
    for b in module.buffers():
        if b.is_floating_point():
            b.zero_()


def materialise(factory, device: str, dtype: torch.dtype) -> torch.nn.Module:
    with torch.device("meta"):
        model = factory()
    model = model.to_empty(device=device)
    fast_init_(model)
    return torch.nn.Module.to(model, dtype=dtype).eval().requires_grad_(False)


def build_full(variant: str, device: str, dtype: torch.dtype) -> ChunkEngine:
    from diffusers import AutoencoderKLLTXVideo, AutoencoderKLWan
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from flashhead.render.neural.vae import LTXVAE, WanVAE
    dit = materialise(lambda: FlashHeadDiT(**VARIANT_CONFIGS[variant]), device, dtype)
    if variant == "pro":
        vae = WanVAE(materialise(AutoencoderKLWan, device, dtype))
    else:
        vae = LTXVAE(materialise(AutoencoderKLLTXVideo, device, dtype))
    audio = AudioEncoder(materialise(lambda: Wav2Vec2Model(Wav2Vec2Config()), device, torch.float32))
    return ChunkEngine(dit, vae, audio, VARIANTS[variant], device=device, dtype=dtype)


def build(variant: str, args) -> ChunkEngine:
    if args.tiny:
        from flashhead.render.neural.tiny import build_tiny_engine
        return build_tiny_engine(variant, size=64)
    engine = build_full(variant, "cuda", torch.bfloat16)
    if args.rope_fp32:
        engine.dit.rope_dtype = torch.float32
    mode = "reduce-overhead" if args.cuda_graphs else None
    if args.compile == "blocks":
        for block in engine.dit.blocks:
            block.compile(mode=mode, dynamic=False)
    elif args.compile == "full":
        engine.dit.compile(mode=mode, dynamic=False)
    if args.compile_vae:
        engine.vae.model.decode = torch.compile(engine.vae.model.decode, dynamic=False)
    return engine


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


def portrait_image(size: int = C.SIZE) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    face = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < (size / 3) ** 2
    img = np.stack([120 + 80 * face, 100 + 60 * face, 90 + 40 * face], -1)
    return img.astype(np.uint8)


def speech(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / C.SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) +
            0.02 * rng.standard_normal(n)).astype(np.float32)


def run_overlap(engine: ChunkEngine, groups: list[list], piece: int, ticks: int) -> float:
    """Alternate two session groups: DiT(g) on stream 1 while VAE(other) runs on stream 2."""
    s_dit, s_vae = torch.cuda.Stream(), torch.cuda.Stream()
    latents = [None, None]
    done = [torch.cuda.Event(), torch.cuda.Event()]       # group's motion ready (after its VAE work)
    ready = [torch.cuda.Event(), torch.cuda.Event()]      # group's latents ready (after its DiT)
    frames = 0
    sync()
    t = time.perf_counter()
    for tick in range(ticks + 1):
        g, other = tick % 2, 1 - tick % 2
        with torch.cuda.stream(s_dit):
            s_dit.wait_event(done[g])
            windows = torch.stack([s.audio.push(speech(piece, tick)) for s in groups[g]])
            latents[g] = engine.denoise(groups[g], windows)
            ready[g].record(s_dit)
        if latents[other] is not None:
            with torch.cuda.stream(s_vae):
                s_vae.wait_event(ready[other])
                frames += engine.finish(groups[other], latents[other]).shape[0] * engine.variant.new_frames
                done[other].record(s_vae)
    sync()
    return frames / (time.perf_counter() - t)


def bench_variant(variant: str, args) -> dict:
    res: dict = {"variant": variant}
    cuda = torch.cuda.is_available() and not args.tiny
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    engine, res["build_s"] = timed(lambda: build(variant, args))
    v = engine.variant
    piece = v.new_frames * C.SAMPLES_PER_FRAME
    img = portrait_image(engine.size)
    portrait, res["prepare_s"] = timed(lambda: engine.prepare(img))
    states = [engine.new_stream(portrait, seed) for seed in range(args.batch)]
    audio = lambda k: [speech(piece, k + i) for i in range(args.batch)]  # noqa: E731
    _, res["first_chunk_cold_s"] = timed(lambda: engine.step(states, audio(0)))   # includes compilation
    for k in range(args.warmup):
        engine.step(states, audio(k + 1))
    # DiT only (4 steps)
    windows = torch.stack([s.audio.windows() for s in states])
    dit_times = [timed(lambda: engine.denoise(states, windows))[1] for _ in range(args.chunks)]
    res["dit_chunk_s"] = float(np.median(dit_times))
    res["dit_fps"] = v.new_frames * args.batch / res["dit_chunk_s"]
    # end to end
    e2e = [timed(lambda k=k: engine.step(states, audio(k)))[1] for k in range(args.chunks)]
    res["e2e_chunk_s"] = float(np.median(e2e))
    res["e2e_fps"] = v.new_frames * args.batch / res["e2e_chunk_s"]
    res["realtime_streams"] = res["e2e_fps"] / C.FPS
    # time to first chunk for a new session on the warm engine (prepare + first chunk)
    def first():
        p = engine.prepare(img)
        return engine.step([engine.new_stream(p, 99)], [speech(piece, 99)])
    _, res["time_to_first_chunk_s"] = timed(first)
    if args.overlap and cuda and time.perf_counter() - T0 < args.budget:
        groups = [[engine.new_stream(portrait, 100 + i) for i in range(args.batch)] for _ in range(2)]
        for group in groups:            # first chunks out of the way (motion shape 1 -> 2)
            engine.step(group, [speech(piece, 0)] * args.batch)
        res["overlap_e2e_fps"] = run_overlap(engine, groups, piece, 2 * args.chunks)
    if cuda:
        res["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del engine
    if cuda:
        torch.cuda.empty_cache()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run with tiny random models")
    ap.add_argument("--variants", default="lite,pro")
    ap.add_argument("--chunks", type=int, default=6, help="timed chunks per measurement")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="sessions batched into one DiT call")
    ap.add_argument("--compile", choices=["none", "blocks", "full"], default="blocks")
    ap.add_argument("--cuda-graphs", action="store_true", help="torch.compile mode=reduce-overhead")
    ap.add_argument("--compile-vae", action="store_true")
    ap.add_argument("--attn", choices=["auto", "flash", "efficient", "math"], default="auto")
    ap.add_argument("--overlap", action="store_true", help="overlap DiT and VAE of two session groups")
    ap.add_argument("--rope-fp32", action="store_true", help="rotate in fp32 instead of float64")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; later variants are skipped")
    args = ap.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device; use --tiny for a CPU smoke run"}))
        return 2
    if not args.tiny:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = {"device": torch.cuda.get_device_name() if not args.tiny else "cpu (tiny models)",
           "torch": torch.__version__, "flags": vars(args), "variants": {}}
    for variant in args.variants.split(","):
        if time.perf_counter() - T0 > args.budget:
            out["variants"][variant] = {"skipped": "time budget"}
            continue
        try:
            with attention_context(args.attn), torch.inference_mode():
                out["variants"][variant] = bench_variant(variant, args)
        except Exception as exc:  # noqa: BLE001 - report and keep the other variant's figures
            out["variants"][variant] = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({variant: out["variants"][variant]}), file=sys.stderr, flush=True)
    out["total_s"] = time.perf_counter() - T0
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
