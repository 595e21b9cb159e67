"""VAEs: Wan2.1 key conversion (original <-> diffusers), strict .pth loading, shapes; Lab colour transfer."""
from __future__ import annotations

import pytest
import torch

from flashhead.errors import BackendUnavailable
from flashhead.render.neural.color import lab_stats, lab_to_rgb, match_colors, rgb_to_lab
from flashhead.render.neural.vae import (diffusers_key_to_wan, load_wan_vae, tiny_ltx_vae, tiny_wan_vae,
                                         wan_key_to_diffusers)


@pytest.mark.parametrize("original,converted", [
    ("conv1.weight", "quant_conv.weight"),
    ("conv2.bias", "post_quant_conv.bias"),
    ("encoder.conv1.weight", "encoder.conv_in.weight"),
    ("encoder.downsamples.0.residual.0.gamma", "encoder.down_blocks.0.norm1.gamma"),
    ("encoder.downsamples.3.residual.6.weight", "encoder.down_blocks.3.conv2.weight"),
    ("encoder.downsamples.3.shortcut.weight", "encoder.down_blocks.3.conv_shortcut.weight"),
    ("encoder.downsamples.5.time_conv.weight", "encoder.down_blocks.5.time_conv.weight"),
    ("encoder.middle.1.to_qkv.weight", "encoder.mid_block.attentions.0.to_qkv.weight"),
    ("encoder.middle.2.residual.3.gamma", "encoder.mid_block.resnets.1.norm2.gamma"),
    ("encoder.head.0.gamma", "encoder.norm_out.gamma"),
    ("decoder.head.2.bias", "decoder.conv_out.bias"),
    ("decoder.upsamples.2.residual.2.weight", "decoder.up_blocks.0.resnets.2.conv1.weight"),
    ("decoder.upsamples.3.resample.1.weight", "decoder.up_blocks.0.upsamplers.0.resample.1.weight"),
    ("decoder.upsamples.3.time_conv.bias", "decoder.up_blocks.0.upsamplers.0.time_conv.bias"),
    ("decoder.upsamples.4.shortcut.weight", "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"),
    ("decoder.upsamples.14.residual.6.bias", "decoder.up_blocks.3.resnets.2.conv2.bias"),
])
def test_known_wan21_names(original, converted):
    assert wan_key_to_diffusers(original) == converted
    assert diffusers_key_to_wan(converted) == original


def test_full_size_conversion_covers_every_key():
    from diffusers import AutoencoderKLWan
    with torch.device("meta"):
        keys = list(AutoencoderKLWan().state_dict())
    originals = [diffusers_key_to_wan(k) for k in keys]
    assert len(set(originals)) == len(keys)
    assert not [k for k in originals if any(p in k for p in ("resnets", "up_blocks", "norm1", "conv_in"))]
    assert [wan_key_to_diffusers(k) for k in originals] == keys


def test_wan_pth_round_trip_loads_strictly(tmp_path):
    torch.manual_seed(0)
    tiny = tiny_wan_vae().model
    original = {diffusers_key_to_wan(k, num_res_blocks=1): v for k, v in tiny.state_dict().items()}
    from flashhead.render.neural.vae import convert_wan_state_dict
    back = convert_wan_state_dict(original, num_res_blocks=1)
    assert set(back) == set(tiny.state_dict())
    assert all(torch.equal(back[k], v) for k, v in tiny.state_dict().items())
    # a full-size loader refuses the tiny file with a readable list
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(original, path)
    with pytest.raises(BackendUnavailable, match="missing key"):
        load_wan_vae(path, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("make,latent", [(tiny_wan_vae, (1, 4, 9, 8, 8)), (tiny_ltx_vae, (1, 4, 5, 2, 2))])
def test_vae_shapes_chunk_and_motion(make, latent):
    torch.manual_seed(0)
    vae = make()
    video = torch.rand(1, 3, 33, 64, 64) * 2 - 1
    z = vae.encode(video)
    assert z.shape == latent
    out = vae.decode(z)
    assert out.shape == video.shape and out.abs().max() <= 1
    motion_frames = 1 + (latent[2] == 9 and 4 or 8)
    assert vae.encode(video[:, :, -motion_frames:]).shape[2] == 2


def test_wan_latent_normalisation_inverts():
    vae = tiny_wan_vae()
    mean, std = vae._stats(torch.zeros(1))
    z = torch.randn(1, 4, 1, 1, 1)
    assert torch.allclose(((z * std + mean) - mean) / std, z, atol=1e-6)
    assert std.flatten().tolist() == [1.5, 0.5, 2.0, 1.0]


def test_lab_round_trip_and_mean_std_transfer():
    rgb = torch.rand(4, 6, 3) * 0.8 + 0.1
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4)
    white = rgb_to_lab(torch.ones(1, 3))[0]
    assert white[0].item() == pytest.approx(100, abs=0.05) and white[1:].abs().max() < 0.05
    torch.manual_seed(0)
    ref = torch.rand(1, 3, 1, 16, 16) * 0.6 - 0.3
    video = (ref.repeat(1, 1, 3, 1, 1) * 0.7 + torch.tensor([0.15, -0.1, 0.05]).view(1, 3, 1, 1, 1))
    out = match_colors(video, lab_stats(ref))
    (m, s), (rm, rs) = lab_stats(out), lab_stats(ref)
    assert torch.allclose(m, rm.expand_as(m), atol=0.5) and torch.allclose(s, rs.expand_as(s), atol=0.5)
    before = lab_stats(video)[0]
    assert (before - rm).abs().max() > 3          # the shift was real
    assert torch.equal(match_colors(video, lab_stats(ref), 0.0), video)
    with pytest.raises(ValueError):
        match_colors(video, lab_stats(ref), 1.5)
