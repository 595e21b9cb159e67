"""Video VAEs: Wan2.1 (Pro, stride 4x8x8, z 16) and LTX-Video 0.9.0 (Lite, stride 8x32x32, z 128).

Both wrap diffusers models behind the same calls on pixel videos in [-1, 1]:
    posterior(video: B x 3 x T x H x W) -> raw (mean, std): B x z x (1 + (T-1)/st) x H/ss x W/ss
    encode(video, generators=None)      -> normalised latent: the posterior mode, or a draw from
                                           it with one generator per batch element
    decode(latent)                      -> video
Both normalise latents per channel, (raw - mean) / std, as the original wrappers do, and
un-normalise before decoding:
  * Wan (Pro): mean/std are the released constants in the diffusers config; encode takes the mode
    and decode clamps to [-1, 1] (the original Wan wrapper does both).
  * LTX (Lite): mean/std are the VAE's `latents_mean` / `latents_std` buffers, loaded with its
    weights (the original's per-channel statistics). The original draws `.sample()` from the
    posterior (for the reference latent and every motion latent); we draw from the request's
    seeded generators, or take the mode when `sample_posterior` is off. decode does NOT clamp:
    the original colour-corrects the raw decode, and clamping first changes the Lab statistics
    and the motion latents fed back.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from diffusers import AutoencoderKLLTXVideo, AutoencoderKLWan

from flashhead.errors import BackendUnavailable
from flashhead.render.neural.keys import load_strict
from flashhead.render.neural.sampler import draw_noise

WAN_VAE_FILE = "VAE_Wan/Wan2.1_VAE.pth"
LTX_VAE_DIR = "VAE_LTX"

# -- Wan2.1 key conversion -----------------------------------------------------------------------
# Original (Wan2.1_VAE.pth)                      diffusers AutoencoderKLWan
#   conv1 / conv2                                quant_conv / post_quant_conv
#   {enc,dec}oder.conv1                          {enc,dec}oder.conv_in
#   {enc,dec}oder.middle.0 / .1 / .2             *.mid_block.resnets.0 / attentions.0 / resnets.1
#   {enc,dec}oder.head.0 (RMS norm) / head.2     *.norm_out / *.conv_out
#   encoder.downsamples.I                        encoder.down_blocks.I (same flat order)
#   decoder.upsamples.J (flat: per level nrb+1   decoder.up_blocks.L.resnets.K /
#     residual blocks, then one resample)          decoder.up_blocks.L.upsamplers.0
#   ResidualBlock residual.0 / .2 / .3 / .6      norm1 / conv1 / norm2 / conv2; shortcut -> conv_shortcut
_RESIDUAL = {"residual.0.": "norm1.", "residual.2.": "conv1.", "residual.3.": "norm2.",
             "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}
_TOP = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv."}
_PART = {"conv1.": "conv_in.", "middle.0.": "mid_block.resnets.0.", "middle.1.": "mid_block.attentions.0.",
         "middle.2.": "mid_block.resnets.1.", "head.0.": "norm_out.", "head.2.": "conv_out."}


def _replace_prefix(rest: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


def _decoder_slot(j: int, num_res_blocks: int, levels: int) -> str:
    """Flat index j of decoder.upsamples -> 'up_blocks.L.resnets.K' or 'up_blocks.L.upsamplers.0'."""
    for level in range(levels):
        size = num_res_blocks + 1 + (level < levels - 1)
        if j < size:
            return f"up_blocks.{level}." + (f"resnets.{j}" if j <= num_res_blocks else "upsamplers.0")
        j -= size
    raise KeyError(f"decoder.upsamples index beyond {levels} levels")


def wan_key_to_diffusers(key: str, num_res_blocks: int = 2, levels: int = 4) -> str:
    """One Wan2.1_VAE.pth key -> its AutoencoderKLWan name."""
    top = _replace_prefix(key, _TOP)
    if top is not None:
        return top
    part, _, rest = key.partition(".")
    m = re.match(r"(downsamples|upsamples)\.(\d+)\.(.*)", rest)
    if m:
        kind, idx, tail = m.group(1), int(m.group(2)), m.group(3)
        slot = f"down_blocks.{idx}" if kind == "downsamples" else _decoder_slot(idx, num_res_blocks, levels)
        rest = f"{slot}.{tail}"
    else:
        rest = _replace_prefix(rest, _PART) or rest
    rest = re.sub(r"(resnets\.\d+\.|down_blocks\.\d+\.|^)(residual\.[0236]\.|shortcut\.)",
                  lambda mm: mm.group(1) + _RESIDUAL[mm.group(2)], rest)
    return f"{part}.{rest}"


def diffusers_key_to_wan(key: str, num_res_blocks: int = 2, levels: int = 4) -> str:
    """Inverse of wan_key_to_diffusers (used to export and to test the mapping both ways)."""
    for old, new in _TOP.items():
        if key.startswith(new):
            return old + key[len(new):]
    part, _, rest = key.partition(".")
    for old, new in _RESIDUAL.items():
        rest = rest.replace("." + new, "." + old)
    m = re.match(r"up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)", rest)
    if m:
        level, k = int(m.group(1)), m.group(3)
        j = level * (num_res_blocks + 2) + (int(k) if k is not None else num_res_blocks + 1)
        return f"{part}.upsamples.{j}.{m.group(4)}"
    rest = re.sub(r"^down_blocks\.", "downsamples.", rest)
    for old, new in _PART.items():
        if rest.startswith(new):
            rest = old + rest[len(new):]
            break
    return f"{part}.{rest}"


def convert_wan_state_dict(state: dict[str, torch.Tensor], num_res_blocks: int = 2,
                           levels: int = 4) -> dict[str, torch.Tensor]:
    return {wan_key_to_diffusers(k, num_res_blocks, levels): v for k, v in state.items()}


# -- wrappers -------------------------------------------------------------------------------------
class _NormalisedVAE:
    """Shared part: per-channel (raw - mean) / std latents over a diffusers video VAE."""

    sample_posterior = False
    clamp_decode = True

    def __init__(self, model, mean: torch.Tensor, std: torch.Tensor):
        self.model = model.eval().requires_grad_(False)
        self.mean = mean.detach().float().reshape(1, -1, 1, 1, 1)
        self.std = std.detach().float().reshape(1, -1, 1, 1, 1)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean.to(like), self.std.to(like)

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(raw)
        return (raw - mean) / std

    def denormalise(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latent)
        return latent * std + mean

    @torch.no_grad()
    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (un-normalised) posterior mean and std."""
        dist = self.model.encode(video.to(self.model.dtype)).latent_dist
        return dist.mean, dist.std

    def latent_from(self, mean: torch.Tensor, std: torch.Tensor,
                    generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """Normalised latent from a raw posterior: its mode, or mean + std * noise (one draw per
        batch element from its generator) when this VAE samples and generators are given."""
        raw = mean
        if self.sample_posterior and generators is not None:
            raw = mean + std * draw_noise(tuple(mean.shape), generators, mean.device, mean.dtype)
        return self.normalise(raw)

    def encode(self, video: torch.Tensor, generators: list[torch.Generator] | None = None) -> torch.Tensor:
        return self.latent_from(*self.posterior(video), generators)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        video = self.model.decode(self.denormalise(latent).to(self.model.dtype)).sample
        return video.clamp(-1, 1) if self.clamp_decode else video


class WanVAE(_NormalisedVAE):
    """Pro: AutoencoderKLWan, released mean/std from its config; posterior mode; clamped decode."""

    time_stride, spatial_stride = 4, 8

    def __init__(self, model: AutoencoderKLWan):
        cfg = model.config
        self.z_dim = cfg.z_dim
        super().__init__(model, torch.tensor(cfg.latents_mean[: cfg.z_dim]),
                         torch.tensor(cfg.latents_std[: cfg.z_dim]))


class LTXVAE(_NormalisedVAE):
    """Lite: AutoencoderKLLTXVideo, mean/std from its latents_mean/latents_std buffers; posterior
    sampled (seeded) unless sample_posterior=False; raw (unclamped) decode."""

    clamp_decode = False

    def __init__(self, model: AutoencoderKLLTXVideo, sample_posterior: bool = True):
        super().__init__(model, model.latents_mean, model.latents_std)
        self.sample_posterior = sample_posterior
        self.z_dim = model.config.latent_channels
        self.time_stride = model.temporal_compression_ratio
        self.spatial_stride = model.spatial_compression_ratio


# -- loaders --------------------------------------------------------------------------------------
def load_wan_vae(path: str | Path, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> WanVAE:
    """Wan2.1_VAE.pth (plain original-named state dict) -> WanVAE, strict."""
    path = Path(path)
    if not path.is_file():
        raise BackendUnavailable(f"Wan VAE weights not found: {path}", field="weights_dir")
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    with torch.device("meta"):
        model = AutoencoderKLWan()
    load_strict(model, convert_wan_state_dict(state), str(path))
    return WanVAE(model.to(device=device, dtype=dtype))


def load_ltx_vae(folder: str | Path, device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
                 sample_posterior: bool = True) -> LTXVAE:
    """VAE_LTX/{config.json, diffusion_pytorch_model.safetensors} (diffusers format) -> LTXVAE."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise BackendUnavailable(f"LTX VAE not found: {folder}/config.json", field="weights_dir")
    model = AutoencoderKLLTXVideo.from_pretrained(str(folder), torch_dtype=dtype, local_files_only=True)
    return LTXVAE(model.to(device), sample_posterior)


def tiny_wan_vae() -> WanVAE:
    """Random tiny Wan VAE (z 4) with the real strides, for CPU tests."""
    model = AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                             latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])
    return WanVAE(model)


def tiny_ltx_vae(sample_posterior: bool = True) -> LTXVAE:
    """Random tiny LTX VAE (z 4) with the real strides (8 x 32 x 32), for CPU tests. Its
    latents_mean/latents_std buffers are random (not 0/1) so the normalisation shows."""
    model = AutoencoderKLLTXVideo(latent_channels=4, block_out_channels=(4, 4, 4, 4),
                                  decoder_block_out_channels=(4, 4, 4, 4), layers_per_block=(1, 1, 1, 1, 1),
                                  decoder_layers_per_block=(1, 1, 1, 1, 1))
    with torch.no_grad():
        model.latents_mean.copy_(torch.randn(4) * 0.5)
        model.latents_std.copy_(torch.rand(4) * 1.5 + 0.5)
    return LTXVAE(model, sample_posterior)
