"""FlashHeadDiT: the SoulX-FlashHead diffusion transformer (Wan2.1 1.3B shape, audio-conditioned).

Loads the official `Model_Pro/` and `Model_Lite/` folders (config.json +
diffusion_pytorch_model.safetensors) through diffusers' ModelMixin, or strictly through
flashhead.render.neural.weights.load_dit. Parameter names and shapes equal the checkpoint's:

    patch_embedding.{weight,bias}          Conv3d(in_dim, dim, patch, stride=patch)
    text_embedding.{0,2}                   Linear(text_dim, dim), Linear(dim, dim)   (unused)
    time_embedding.{0,2}                   Linear(freq_dim, dim), Linear(dim, dim)
    time_projection.1                      Linear(dim, 6*dim)
    blocks.N.self_attn.{q,k,v,o}           Linear(dim, dim); .norm_q/.norm_k RMSNorm(dim)
    blocks.N.cross_attn.{q,k,v,o}          Linear(dim, dim); .norm_q/.norm_k RMSNorm(dim)
    blocks.N.norm3                         LayerNorm(dim) with affine
    blocks.N.ffn.{0,2}                     Linear(dim, ffn_dim), Linear(ffn_dim, dim)
    blocks.N.modulation                    [1, 6, dim]
    head.head, head.modulation             Linear(dim, out_dim*prod(patch)), [1, 2, dim]
    audio_emb.proj.{0,1,3,4}               (unused) see below
    audio_proj.{proj1,proj1_vf,proj2,proj3,norm}

Unlisted shapes, derived from the published totals (843 tensors; 1,507,694,912 params Pro):
  * Listed tensors: 2 (patch) + 4 (text) + 4 (time) + 2 (time proj) + 30 * 27 (block: 4 Linear
    x2 + 2 RMSNorm, twice = 20; norm3 2; ffn 4; modulation 1) + 3 (head) + 10 (audio_proj) = 835,
    so audio_emb.proj.{0,1,3,4} hold 843 - 835 = 8 tensors: four modules with weight and bias.
  * Listed parameters (Pro) sum to 1,505,918,528; the remainder is 1,776,384. With the Wan
    MLPProj layout (0 LayerNorm(a), 1 Linear(a, a), 2 GELU, 3 Linear(a, dim), 4 LayerNorm(dim)):
    2a + a^2 + a + a*dim + dim + 2*dim = a^2 + 1539a + 4608 = 1,776,384  ->  a = 768, the
    wav2vec2 width. Lite gives the same remainder (1,526,864,256 - 1,525,087,872).
  * norm1/norm2 and the head norm have no parameters (LayerNorm without affine); RMSNorm has a
    weight only; audio_proj.norm is an affine LayerNorm(dim) (weight + bias).
  * proj1_vf input = (window + vae_stride[0] - 1) * 12 * 768: 8 frames Pro, 12 frames Lite.
"""
from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from flashhead.render.neural.audio_proj import AudioProjection, group_audio_windows
from flashhead.render.neural.layers import DiTBlock, Head, MLPProj, rope_table, sinusoidal_embedding


class FlashHeadDiT(ModelMixin, ConfigMixin):
    """Audio-driven video DiT. Defaults are the released Pro model."""

    _no_split_modules = ["DiTBlock"]

    @register_to_config
    def __init__(
        self,
        dim: int = 1536,                       # model width
        in_dim: int = 32,                      # noisy latent + reference latent channels
        ffn_dim: int = 8960,                   # feed-forward hidden width
        out_dim: int = 16,                     # predicted velocity channels (= latent channels)
        text_dim: int = 4096,                  # width of the unused text embedding input
        freq_dim: int = 256,                   # sinusoidal timestep embedding size
        eps: float = 1e-6,                     # norm epsilon
        vae_stride: tuple[int, int, int] = (4, 8, 8),   # VAE (time, height, width) compression
        patch_size: tuple[int, int, int] = (1, 2, 2),   # latent patch per token
        num_heads: int = 12,
        num_layers: int = 30,
        has_image_input: bool = False,         # released checkpoints: False (no CLIP branch)
        audio_window: int = 5,                 # audio frames per video frame (offsets -2..+2)
        audio_layers: int = 12,                # wav2vec2 hidden states stacked per frame
        audio_channels: int = 768,             # wav2vec2 width
        audio_hidden: int = 512,               # audio projection hidden width
        audio_tokens: int = 32,                # context tokens per latent frame
    ):
        super().__init__()
        if has_image_input:
            raise ValueError("has_image_input: image cross-attention is not in the released checkpoints")
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim: {dim} must split into {num_heads} heads of even size")
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(DiTBlock(dim, ffn_dim, num_heads, eps) for _ in range(num_layers))
        self.head = Head(dim, out_dim, patch_size, eps)
        self.audio_emb = MLPProj(audio_channels, dim)
        self.audio_proj = AudioProjection(audio_window, vae_stride[0], audio_layers, audio_channels,
                                          audio_hidden, audio_tokens, dim)
        self.rope_dtype = torch.float64        # the original rotates in float64; bench may use fp32
        self._rope_cache: dict = {}

    # -- helpers ------------------------------------------------------------------------------
    def frames_for_latents(self, latent_frames: int) -> int:
        """Pixel frames covered by `latent_frames` latent frames: 1 + (F-1) * time stride."""
        return 1 + (latent_frames - 1) * self.config.vae_stride[0]

    def _rope(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        key = (grid, str(device), self.rope_dtype)
        if key not in self._rope_cache:
            table = rope_table(grid, self.config.dim // self.config.num_heads)
            cdtype = torch.complex128 if self.rope_dtype == torch.float64 else torch.complex64
            self._rope_cache[key] = table.to(device=device, dtype=cdtype)
        return self._rope_cache[key]

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """x: B x L x (pt*ph*pw*C) -> B x C x F x H x W."""
        (f, h, w), (pt, ph, pw) = grid, self.config.patch_size
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], x.shape[1], f * pt, h * ph, w * pw)

    def audio_context(self, context: torch.Tensor) -> torch.Tensor:
        """context: B x T x W x Ly x A windows -> B x F x tokens x dim."""
        first, later = group_audio_windows(context, self.config.vae_stride[0])
        return self.audio_proj(first, later)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, timestep: torch.Tensor | float, context: torch.Tensor,
                y: torch.Tensor) -> torch.Tensor:
        """Predict the flow velocity of one chunk.

        x:        B x out_dim x F x H x W   noisy latent (motion frames already written in)
        timestep: (B,) or scalar in [0, 1000] (sigma * 1000), one value for all tokens
        context:  B x T x W x Ly x A        wav2vec2 windows per pixel frame, T = 1 + (F-1)*s
        y:        B x out_dim x F x H x W   reference latent (the portrait repeated over the chunk)
        returns   B x out_dim x F x H x W   velocity
        """
        dtype = self.patch_embedding.weight.dtype
        # 1. patchify the channel concatenation of noisy and reference latents
        tokens = self.patch_embedding(torch.cat([x, y], dim=1).to(dtype))
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)                       # B x L x D
        # 2. timestep embedding (one scalar per sample) and the six adaLN vectors
        b = tokens.shape[0]
        # the original casts the timestep to the model dtype before embedding it: in bf16
        # 937.5 / 833.3 / 625 become 936 / 832 / 624
        t = torch.as_tensor(timestep, device=tokens.device).reshape(-1).expand(b).to(dtype)
        t_emb = self.time_embedding(sinusoidal_embedding(t, self.config.freq_dim).to(dtype))
        t_mod = self.time_projection(t_emb).unflatten(1, (6, self.config.dim))
        # 3. audio windows -> 32 tokens per latent frame
        audio = self.audio_context(context.to(dtype))
        if audio.shape[1] != grid[0]:
            raise ValueError(f"context: {audio.shape[1]} latent frames of audio for {grid[0]} video")
        # 4. transformer blocks with 3D RoPE (positions restart at 0 in every chunk)
        rope = self._rope(grid, tokens.device)
        for block in self.blocks:
            tokens = block(tokens, audio, t_mod, rope)
        # 5. modulated head and unpatchify
        return self._unpatchify(self.head(tokens, t_emb), grid)


# Variant presets: config.json fields of the released checkpoints.
PRO_CONFIG = dict(dim=1536, in_dim=32, ffn_dim=8960, out_dim=16, text_dim=4096, freq_dim=256, eps=1e-6,
                  vae_stride=(4, 8, 8), patch_size=(1, 2, 2), num_heads=12, num_layers=30,
                  has_image_input=False)
LITE_CONFIG = dict(PRO_CONFIG, in_dim=256, out_dim=128, vae_stride=(8, 32, 32), patch_size=(1, 1, 1))
VARIANT_CONFIGS = {"pro": PRO_CONFIG, "lite": LITE_CONFIG}


def tiny_config(variant: str, **overrides) -> dict:
    """A few-thousand-parameter config with the variant's latent layout, for CPU tests."""
    base = VARIANT_CONFIGS[variant]
    z = 4
    cfg = dict(base, dim=32, in_dim=2 * z, out_dim=z, ffn_dim=64, text_dim=16, freq_dim=16,
               num_heads=2, num_layers=2, audio_layers=2, audio_channels=16, audio_hidden=24,
               audio_tokens=4)
    cfg.update(overrides)
    return cfg


def count_parameters(model: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in model.parameters())
