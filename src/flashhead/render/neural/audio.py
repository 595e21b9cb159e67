"""Audio path: wav2vec2-base features at 25 per second, +-2-frame windows, the 8 s rolling buffer.

The CNN feature sequence (50 per second) is resampled linearly (align_corners=True) to one
vector per video frame BEFORE the transformer encoder, and the 12 layer outputs (not the
embedding output) are stacked: one (12, 768) matrix per video frame.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from flashhead import constants as C
from flashhead.errors import BackendUnavailable, InputError

if TYPE_CHECKING:       # transformers' wav2vec2 takes seconds to import: only where a model is made
    from transformers import Wav2Vec2Config, Wav2Vec2Model

WAV2VEC2_DIRS = ("wav2vec2-base-960h", "facebook/wav2vec2-base-960h", "wav2vec2")


def find_wav2vec2(weights_dir: str | Path) -> Path | None:
    """The wav2vec2 folder inside weights_dir (any of WAV2VEC2_DIRS holding a config.json)."""
    for name in WAV2VEC2_DIRS:
        folder = Path(weights_dir) / name
        if (folder / "config.json").is_file():
            return folder
    return None


def tiny_wav2vec2_config(hidden: int = 16, layers: int = 2) -> Wav2Vec2Config:
    """A random-weight wav2vec2 with the real CNN strides (320 samples per feature)."""
    from transformers import Wav2Vec2Config
    return Wav2Vec2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                          intermediate_size=2 * hidden, conv_dim=(8,) * 7,
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


class AudioEncoder(nn.Module):
    """wav2vec2 in float32 -> (T, layers, width) features, one row per video frame."""

    def __init__(self, model: Wav2Vec2Model):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def from_config(cls, config: Wav2Vec2Config) -> "AudioEncoder":
        from transformers import Wav2Vec2Model
        return cls(Wav2Vec2Model(config))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "AudioEncoder":
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise BackendUnavailable(f"no wav2vec2 model in {folder} (expected config.json + weights)",
                                     field="weights_dir")
        from transformers import Wav2Vec2Model
        return cls(Wav2Vec2Model.from_pretrained(str(folder), local_files_only=True))

    @property
    def layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def forward(self, samples: torch.Tensor, n_frames: int | None = None) -> torch.Tensor:
        """samples: (N,) or B x N float 16 kHz -> B x T x layers x width (T = N // 640 by default)."""
        x = samples.float().reshape(-1, samples.shape[-1])
        n_frames = n_frames or x.shape[-1] // C.SAMPLES_PER_FRAME
        # 1. the feature extractor's normalisation (zero mean, unit variance per clip)
        x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-7)
        # 2. CNN features, resampled to one per video frame before the encoder
        feats = self.model.feature_extractor(x)                          # B x 512 x T_cnn
        feats = F.interpolate(feats, size=n_frames, mode="linear", align_corners=True)
        hidden, _ = self.model.feature_projection(feats.transpose(1, 2))
        # 3. transformer encoder, keeping every layer's output
        enc = self.model.encoder
        hidden = enc.dropout(enc.layer_norm(hidden + enc.pos_conv_embed(hidden)))
        states = []
        for layer in enc.layers:
            hidden = layer(hidden, attention_mask=None)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
            states.append(hidden)
        return torch.stack(states, dim=2)


def window_indices(start: int, stop: int, radius: int = C.NEURAL_AUDIO_RADIUS) -> torch.Tensor:
    """(stop-start, 2r+1) frame indices i-r..i+r for i in [start, stop), clamped to [0, stop-1]."""
    if not 0 <= start < stop:
        raise ValueError(f"window: need 0 <= start < stop, got {start}, {stop}")
    offsets = torch.arange(-radius, radius + 1)
    idx = torch.arange(start, stop).unsqueeze(1) + offsets.unsqueeze(0)
    return idx.clamp(0, stop - 1)


def audio_windows(features: torch.Tensor, start: int, stop: int,
                  radius: int = C.NEURAL_AUDIO_RADIUS) -> torch.Tensor:
    """features: T x Ly x A -> (stop-start) x (2r+1) x Ly x A windows."""
    return features[window_indices(start, stop, radius)]


class AudioBuffer:
    """The streaming audio state of one session: 8 s of samples, initialised with silence.

    push(samples) appends, drops the oldest samples, runs wav2vec2 over the whole 8 s window
    (200 frames) and returns the windows of its last `frames` frames: frames x 5 x Ly x A.
    """

    def __init__(self, encoder: AudioEncoder, frames: int = C.NEURAL_CHUNK_FRAMES,
                 samples: int = C.NEURAL_AUDIO_BUFFER_SAMPLES):
        if samples % C.SAMPLES_PER_FRAME or samples // C.SAMPLES_PER_FRAME < frames:
            raise ValueError(f"samples: {samples} is not a whole number of >= {frames} frames")
        self.encoder = encoder
        self.frames = frames
        self.samples = np.zeros(samples, np.float32)

    def append(self, samples: np.ndarray) -> None:
        samples = np.asarray(samples, np.float32).reshape(-1)
        if not np.all(np.isfinite(samples)):
            raise InputError("audio contains NaN or infinite samples", field="audio")
        keep = len(self.samples)
        self.samples = np.concatenate([self.samples, samples])[-keep:]

    def windows(self) -> torch.Tensor:
        device = next(self.encoder.parameters()).device
        feats = self.encoder(torch.from_numpy(self.samples).to(device))[0]     # T x Ly x A
        total = feats.shape[0]
        return audio_windows(feats, total - self.frames, total)

    def push(self, samples: np.ndarray) -> torch.Tensor:
        self.append(samples)
        return self.windows()
