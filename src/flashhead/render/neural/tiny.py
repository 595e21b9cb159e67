"""Tiny random-weight engines with the real geometry (strides, chunking), for CPU tests and smoke runs."""
from __future__ import annotations

import torch

from flashhead.render.neural.audio import AudioEncoder, tiny_wav2vec2_config
from flashhead.render.neural.dit import FlashHeadDiT, tiny_config
from flashhead.render.neural.stream import VARIANTS, ChunkEngine
from flashhead.render.neural.vae import tiny_ltx_vae, tiny_wan_vae


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
