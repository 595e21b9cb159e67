"""Random-weight engines for tests and benchmarks.

build_tiny_engine:   tiny models with the real geometry (strides, chunking), for CPU tests.
build_random_engine: the full-size models with fast random weights (speed and memory do not
                     depend on weight values), for bench/neural_cpu_smoke.py and bench/gpu_neural.py.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from flashhead.render.neural.audio import AudioEncoder, tiny_wav2vec2_config
from flashhead.render.neural.dit import FlashHeadDiT, tiny_config
from flashhead.render.neural.stream import VARIANTS, ChunkEngine
from flashhead.render.neural.vae import tiny_ltx_vae, tiny_wan_vae

if TYPE_CHECKING:
    import numpy as np


def build_tiny_engine(variant: str, size: int = 64, seed: int = 0, device: str = "cpu",
                      sample_posterior: bool = True) -> ChunkEngine:
    """DiT (2 layers, dim 32), VAE (z 4) and wav2vec2 (2 layers, width 16), seeded random weights."""
    torch.manual_seed(seed)
    audio = AudioEncoder.from_config(tiny_wav2vec2_config(hidden=16, layers=2))
    dit = FlashHeadDiT(**tiny_config(variant, audio_layers=2, audio_channels=16)).eval()
    vae = tiny_wan_vae() if variant == "pro" else tiny_ltx_vae(sample_posterior)
    for module in (audio, dit, vae.model):
        module.to(device)
    return ChunkEngine(dit, vae, audio, VARIANTS[variant], device=device, size=size)


@torch.no_grad()
def fast_init_(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights in place on the module's device: N(0, 1/fan_in) matrices, norms 1, biases 0;
    buffers 0, except statistics named *std (latent std: 1)."""
    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for name, p in module.named_parameters():
        if p.ndim >= 2:
            p.normal_(0, 1 / math.sqrt(math.prod(p.shape[1:])), generator=gen)
        elif name.endswith(("bias", "beta")):
            p.zero_()
        else:
            p.fill_(1.0)
    for name, b in module.named_buffers():
        if b.is_floating_point():
            b.fill_(1.0 if name.endswith("std") else 0.0)


def materialise(factory, device: str, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """Build on the meta device (no init cost), allocate on `device`, fill with fast_init_."""
    with torch.device("meta"):
        model = factory()
    model = model.to_empty(device=device)
    fast_init_(model, seed)
    return torch.nn.Module.to(model, dtype=dtype).eval().requires_grad_(False)


def build_random_engine(variant: str, device: str = "cpu", dtype: torch.dtype = torch.bfloat16,
                        size: int = 512) -> ChunkEngine:
    """Full-size DiT, VAE and wav2vec2 (float32, like the original) with random weights."""
    from diffusers import AutoencoderKLLTXVideo, AutoencoderKLWan
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from flashhead.render.neural.dit import VARIANT_CONFIGS
    from flashhead.render.neural.vae import LTXVAE, WanVAE
    dit = materialise(lambda: FlashHeadDiT(**VARIANT_CONFIGS[variant]), device, dtype)
    if variant == "pro":
        vae = WanVAE(materialise(AutoencoderKLWan, device, dtype))
    else:
        vae = LTXVAE(materialise(AutoencoderKLLTXVideo, device, dtype))
    audio = AudioEncoder(materialise(lambda: Wav2Vec2Model(Wav2Vec2Config()), device, torch.float32))
    return ChunkEngine(dit, vae, audio, VARIANTS[variant], device=device, dtype=dtype, size=size)


def synthetic_portrait(size: int) -> "np.ndarray":
    """A size x size x 3 uint8 face-like disc (benchmarks: content does not change the cost)."""
    import numpy as np
    yy, xx = np.mgrid[:size, :size]
    face = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < (size / 3) ** 2
    return np.stack([120 + 80 * face, 100 + 60 * face, 90 + 40 * face], -1).astype(np.uint8)


def synthetic_speech(n: int, seed: int = 0) -> "np.ndarray":
    """n samples of a voiced, syllable-modulated tone with a little noise, float32 at 16 kHz."""
    import numpy as np

    from flashhead import constants as C
    rng = np.random.default_rng(seed)
    t = np.arange(n) / C.SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) +
            0.02 * rng.standard_normal(n)).astype(np.float32)
