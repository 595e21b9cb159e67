"""The streaming chunk loop: audio windows + motion latents -> 28 (Pro) / 24 (Lite) new frames.

Per chunk (33 pixel frames):
  1. sample the latent with the motion latents written into its first frames (sampler.py);
  2. decode it with the VAE;
  3. colour-correct every frame to the reference in Lab (strength 1);
  4. re-encode the last 5 (Pro) / 9 (Lite) corrected frames -> 2 motion latents for the next chunk;
  5. emit the frames after the motion frames.
The first chunk's motion latent is the first latent frame of the reference latent.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flashhead import constants as C
from flashhead.errors import InputError
from flashhead.render.neural.audio import AudioBuffer, AudioEncoder
from flashhead.render.neural.color import lab_stats, match_colors
from flashhead.render.neural.dit import FlashHeadDiT
from flashhead.render.neural.sampler import sample, shifted_sigmas


@dataclass(frozen=True)
class Variant:
    """Streaming geometry of a released variant (derived from its VAE time stride)."""

    name: str                 # "pro" | "lite"
    model_dir: str            # DiT folder inside the weights dir
    time_stride: int          # VAE time compression: 4 (Wan) / 8 (LTX)
    motion_latents: int = 2   # latent frames of motion context carried between chunks

    @property
    def motion_frames(self) -> int:
        return (self.motion_latents - 1) * self.time_stride + 1          # 5 Pro, 9 Lite

    @property
    def new_frames(self) -> int:
        return C.NEURAL_CHUNK_FRAMES - self.motion_frames                # 28 Pro, 24 Lite

    @property
    def latent_frames(self) -> int:
        return (C.NEURAL_CHUNK_FRAMES - 1) // self.time_stride + 1       # 9 Pro, 5 Lite


VARIANTS = {"pro": Variant("pro", "Model_Pro", 4), "lite": Variant("lite", "Model_Lite", 8)}


def cover_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the image covers size x size, then centre-crop (the original's default)."""
    import cv2   # here, so the engine imports on a bare GPU machine without OpenCV (bench/gpu_neural.py)
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return np.array(image)          # a writable copy (torch.from_numpy needs one)
    scale = max(size / h, size / w)
    nh, nw = max(size, int(np.ceil(h * scale))), max(size, int(np.ceil(w * scale)))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(resized[top:top + size, left:left + size])


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """B x 3 x T x H x W in [-1, 1] -> B x T x H x W x 3 uint8, as the original converts:
    (x + 1) / 2 clipped to [0, 1], times 255, truncated (not rounded), in float32."""
    x = ((video.float() + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).cpu().numpy()


@dataclass
class Portrait:
    """A prepared reference: immutable, shareable between sessions."""

    image: np.ndarray               # size x size x 3 uint8
    pixels: torch.Tensor            # 1 x 3 x 1 x H x W in [-1, 1]
    posterior: tuple[torch.Tensor, torch.Tensor]   # raw VAE posterior (mean, std) of the portrait
    #                                 repeated over a chunk: 1 x z x F x h x w each
    color: tuple[torch.Tensor, torch.Tensor]   # Lab mean/std of the reference


@dataclass
class StreamState:
    """Per-session state: reference latent, motion latents, noise generator, audio buffer."""

    portrait: Portrait
    generator: torch.Generator
    ref: torch.Tensor               # 1 x z x F x h x w normalised reference latent (drawn per seed)
    motion: torch.Tensor            # 1 x z x M x h x w (M = 1 before the first chunk, then 2)
    audio: AudioBuffer
    chunks: int = 0


class ChunkEngine:
    """DiT + VAE + wav2vec2 wired into the streaming loop; batches sessions chunk by chunk."""

    def __init__(self, dit: FlashHeadDiT, vae, audio: AudioEncoder, variant: Variant,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 size: int = C.SIZE, steps: int = 4, shift: float = 5.0, color_strength: float = 1.0):
        if dit.config.vae_stride[0] != variant.time_stride:
            raise ValueError(f"variant: DiT time stride {dit.config.vae_stride[0]} != {variant.time_stride}")
        self.dit, self.vae, self.audio, self.variant = dit, vae, audio, variant
        self.device, self.dtype, self.size = torch.device(device), dtype, size
        self.sigmas = shifted_sigmas(steps, shift)
        self.color_strength = color_strength

    @torch.no_grad()
    def prepare(self, image: np.ndarray) -> Portrait:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"expected an H x W x 3 uint8 RGB image, got {image.shape} {image.dtype}",
                             field="image")
        image = cover_crop(image, self.size)
        pixels = torch.from_numpy(image).to(self.device).permute(2, 0, 1).float() / 127.5 - 1
        pixels = pixels[None, :, None]
        chunk = pixels.expand(-1, -1, C.NEURAL_CHUNK_FRAMES, -1, -1).to(self.dtype)
        return Portrait(image, pixels, self.vae.posterior(chunk), lab_stats(pixels))

    def new_stream(self, portrait: Portrait, seed: int) -> StreamState:
        """The reference latent is drawn here, from the session's seeded generator (or is the
        posterior mode), so one cached Portrait serves every seed and one seed gives one video."""
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        ref = self.vae.latent_from(*portrait.posterior, [gen]).to(self.dtype)
        return StreamState(portrait, gen, ref, ref[:, :, :1].clone(), AudioBuffer(self.audio))

    @torch.no_grad()
    def denoise(self, states: list[StreamState], windows: torch.Tensor) -> torch.Tensor:
        """windows: B x 33 x 5 x Ly x A -> final latents B x z x F x h x w (DiT only)."""
        motion = torch.cat([s.motion for s in states])
        ref = torch.cat([s.ref for s in states])
        context = windows.to(self.device, self.dtype)

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.dit(x, t, context, ref)

        return sample(velocity, tuple(ref.shape), motion, [s.generator for s in states],
                      self.sigmas, self.dtype)

    @torch.no_grad()
    def finish(self, states: list[StreamState], latents: torch.Tensor) -> np.ndarray:
        """Decode, colour-correct, re-encode motion frames -> B x new_frames x H x W x 3 uint8."""
        video = self.vae.decode(latents)              # LTX: raw, unclamped, as the original corrects it
        stats = tuple(torch.cat(parts) for parts in zip(*(s.portrait.color for s in states)))
        # float32 Lab transfer: the original runs it in bf16, which costs up to 33 levels per channel
        video = match_colors(video.float(), stats, self.color_strength)
        tail = video[:, :, -self.variant.motion_frames:].to(self.dtype)
        motion = self.vae.encode(tail, [s.generator for s in states]).to(self.dtype)
        for i, state in enumerate(states):
            state.motion = motion[i:i + 1]
            state.chunks += 1
        return to_uint8(video[:, :, -self.variant.new_frames:])

    def step(self, states: list[StreamState], audio: list[np.ndarray]) -> np.ndarray:
        """Each session's next new_frames * 640 samples -> B x new_frames x H x W x 3 frames."""
        need = self.variant.new_frames * C.SAMPLES_PER_FRAME
        if any(len(a) != need for a in audio) or len(audio) != len(states):
            raise ValueError(f"audio: one slice of {need} samples per session expected")
        if len({s.motion.shape[2] for s in states}) != 1:
            raise ValueError("states: sessions at their first chunk and later ones cannot share a batch")
        windows = torch.stack([s.audio.push(a) for s, a in zip(states, audio)])
        return self.finish(states, self.denoise(states, windows))
