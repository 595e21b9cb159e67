"""Audio path: wav2vec2 at 25 fps with every layer, +-2 windows, grouping, rolling buffer."""
from __future__ import annotations

import numpy as np
import pytest

from flashhead import constants as C
from flashhead.errors import InputError

from lazy_imports import lazy_import

torch = lazy_import("torch")
neural_audio = lazy_import("flashhead.render.neural.audio")
audio_proj = lazy_import("flashhead.render.neural.audio_proj")


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return neural_audio.AudioEncoder.from_config(neural_audio.tiny_wav2vec2_config(hidden=16, layers=2))


def test_window_indices_clamp_at_both_edges():
    idx = neural_audio.window_indices(0, 6)
    assert idx[0].tolist() == [0, 0, 0, 1, 2]
    assert idx[2].tolist() == [0, 1, 2, 3, 4]
    assert idx[-1].tolist() == [3, 4, 5, 5, 5]
    tail = neural_audio.window_indices(167, 200)                      # streaming: last 33 of 200 frames
    assert tail.shape == (33, 5)
    assert tail[0].tolist() == [165, 166, 167, 168, 169]  # clamps only at the buffer, not the slice
    assert tail[-1].tolist() == [197, 198, 199, 199, 199]


def test_audio_windows_gather_rows():
    feats = torch.arange(10.0).view(10, 1, 1).expand(10, 2, 3)
    w = neural_audio.audio_windows(feats, 8, 10)
    assert w.shape == (2, 5, 2, 3)
    assert w[:, :, 0, 0].tolist() == [[6, 7, 8, 9, 9], [7, 8, 9, 9, 9]]


@pytest.mark.parametrize("stride,width", [(4, 8), (8, 12)])
def test_grouping_picks_first_past_middle_centre_last_future(stride, width):
    t = 1 + 2 * stride
    # value = 10 * frame + offset index, so every slot says where it came from
    windows = (10 * torch.arange(t)[:, None] + torch.arange(5)[None, :]).float()
    windows = windows.view(1, t, 5, 1, 1)
    first, later = audio_proj.group_audio_windows(windows, stride)
    assert first.shape == (1, 1, 5, 1, 1) and first.flatten().tolist() == [0, 1, 2, 3, 4]
    assert later.shape == (1, 2, width, 1, 1)
    g = later[0, 0].flatten().tolist()           # latent frame 1 = pixel frames 1..stride
    middle = [10 * f + 2 for f in range(2, stride)]
    assert g == [10, 11, 12] + middle + [10 * stride + 2, 10 * stride + 3, 10 * stride + 4]
    with pytest.raises(ValueError):
        audio_proj.group_audio_windows(windows[:, :-1], stride)


def test_audio_projection_shapes():
    proj = audio_proj.AudioProjection(window=5, time_stride=4, layers=2, channels=3, hidden=8, tokens=4, dim=6)
    first, later = audio_proj.group_audio_windows(torch.randn(2, 33, 5, 2, 3), 4)
    out = proj(first, later)
    assert out.shape == (2, 9, 4, 6)
    # LayerNorm output: zero mean per token (weight 1, bias 0 at init)
    assert torch.allclose(out.mean(-1), torch.zeros(2, 9, 4), atol=1e-5)


def test_encoder_keeps_every_layer_not_the_embedding(encoder):
    x = torch.randn(1, 16000)
    with torch.no_grad():
        ref = encoder.model(x, output_hidden_states=True).hidden_states
    cnn_frames = ref[0].shape[1]
    mine = encoder(x, n_frames=cnn_frames)            # no resampling when sizes agree
    assert len(ref) == 3 and mine.shape == (1, cnn_frames, 2, 16)
    assert torch.allclose(mine, torch.stack(ref[1:], dim=2), atol=1e-4)


def test_encoder_resamples_to_25_per_second_before_the_encoder(encoder):
    feats = encoder(torch.randn(2 * C.SAMPLE_RATE))
    assert feats.shape == (1, 2 * C.FPS, 2, 16)


def test_buffer_starts_silent_and_rolls(encoder):
    buf = neural_audio.AudioBuffer(encoder)
    assert len(buf.samples) == C.NEURAL_AUDIO_BUFFER_SAMPLES == 128_000 and not buf.samples.any()
    piece = np.ones(28 * C.SAMPLES_PER_FRAME, np.float32)
    w = buf.push(piece)
    assert w.shape == (33, 5, 2, 16)
    assert np.array_equal(buf.samples[-len(piece):], piece) and not buf.samples[:-len(piece)].any()
    for _ in range(10):
        buf.append(np.full(C.SAMPLE_RATE, 0.5, np.float32))
    assert len(buf.samples) == 128_000 and np.all(buf.samples == 0.5)
    with pytest.raises(InputError):
        buf.append(np.array([np.nan], np.float32))
