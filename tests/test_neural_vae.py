"""VAEs: Wan2.1 key conversion (original <-> diffusers), strict .pth loading, shapes; Lab colour transfer."""
from __future__ import annotations

import functools

import pytest

from flashhead.errors import BackendUnavailable

from lazy_imports import lazy_import

torch = lazy_import("torch")
color = lazy_import("flashhead.render.neural.color")
vae_mod = lazy_import("flashhead.render.neural.vae")


@functools.cache
def sample_video():
    return torch.rand(1, 3, 33, 64, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1


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
    assert vae_mod.wan_key_to_diffusers(original) == converted
    assert vae_mod.diffusers_key_to_wan(converted) == original


def test_full_size_conversion_covers_every_key():
    from diffusers import AutoencoderKLWan
    with torch.device("meta"):
        keys = list(AutoencoderKLWan().state_dict())
    originals = [vae_mod.diffusers_key_to_wan(k) for k in keys]
    assert len(set(originals)) == len(keys)
    assert not [k for k in originals if any(p in k for p in ("resnets", "up_blocks", "norm1", "conv_in"))]
    assert [vae_mod.wan_key_to_diffusers(k) for k in originals] == keys


def test_wan_pth_round_trip_loads_strictly(tmp_path):
    torch.manual_seed(0)
    tiny = vae_mod.tiny_wan_vae().model
    original = {vae_mod.diffusers_key_to_wan(k, num_res_blocks=1): v for k, v in tiny.state_dict().items()}
    from flashhead.render.neural.vae import convert_wan_state_dict
    back = convert_wan_state_dict(original, num_res_blocks=1)
    assert set(back) == set(tiny.state_dict())
    assert all(torch.equal(back[k], v) for k, v in tiny.state_dict().items())
    # a full-size loader refuses the tiny file with a readable list
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(original, path)
    with pytest.raises(BackendUnavailable, match="missing key"):
        vae_mod.load_wan_vae(path, device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("make,latent", [("tiny_wan_vae", (1, 4, 9, 8, 8)), ("tiny_ltx_vae", (1, 4, 5, 2, 2))])
@pytest.mark.slow
def test_vae_shapes_chunk_and_motion(make, latent):
    torch.manual_seed(0)
    vae = getattr(vae_mod, make)()
    video = torch.rand(1, 3, 33, 64, 64) * 2 - 1
    z = vae.encode(video)
    assert z.shape == latent
    out = vae.decode(z)
    assert out.shape == video.shape and (out.abs().max() <= 1) == vae.clamp_decode   # LTX: raw decode
    motion_frames = 1 + (latent[2] == 9 and 4 or 8)
    assert vae.encode(video[:, :, -motion_frames:]).shape[2] == 2


def test_wan_latent_normalisation_inverts():
    vae = vae_mod.tiny_wan_vae()
    mean, std = vae._stats(torch.zeros(1))
    z = torch.randn(1, 4, 1, 1, 1)
    assert torch.allclose(((z * std + mean) - mean) / std, z, atol=1e-6)
    assert std.flatten().tolist() == [1.5, 0.5, 2.0, 1.0]


def test_lab_round_trip_and_mean_std_transfer():
    rgb = torch.rand(4, 6, 3) * 0.8 + 0.1
    assert torch.allclose(color.lab_to_rgb(color.rgb_to_lab(rgb)), rgb, atol=1e-4)
    white = color.rgb_to_lab(torch.ones(1, 3))[0]
    assert white[0].item() == pytest.approx(100, abs=0.05) and white[1:].abs().max() < 0.05
    torch.manual_seed(0)
    ref = torch.rand(1, 3, 1, 16, 16) * 0.6 - 0.3
    video = (ref.repeat(1, 1, 3, 1, 1) * 0.7 + torch.tensor([0.15, -0.1, 0.05]).view(1, 3, 1, 1, 1))
    out = color.match_colors(video, color.lab_stats(ref))
    (m, s), (rm, rs) = color.lab_stats(out), color.lab_stats(ref)
    assert torch.allclose(m, rm.expand_as(m), atol=0.5) and torch.allclose(s, rs.expand_as(s), atol=0.5)
    before = color.lab_stats(video)[0]
    assert (before - rm).abs().max() > 3          # the shift was real
    assert torch.equal(color.match_colors(video, color.lab_stats(ref), 0.0), video)
    with pytest.raises(ValueError):
        color.match_colors(video, color.lab_stats(ref), 1.5)


def test_ltx_latents_normalised_with_the_vae_buffers_and_decode_inverts():
    torch.manual_seed(0)
    vae = vae_mod.tiny_ltx_vae(sample_posterior=False)
    mean, std = vae.model.latents_mean.view(1, -1, 1, 1, 1), vae.model.latents_std.view(1, -1, 1, 1, 1)
    assert (mean.abs() > 0.01).all() and ((std - 1).abs() > 0.01).all()      # not the 0/1 defaults
    raw = vae.model.encode(sample_video()).latent_dist.mode()
    z = vae.encode(sample_video())
    assert torch.allclose(z, (raw - mean) / std, atol=1e-6)
    decoded = vae.decode(z)
    assert torch.allclose(decoded, vae.model.decode(raw).sample, atol=1e-5)  # un-normalised first
    assert decoded.abs().max() > 1.05                                          # and not clamped


@pytest.mark.slow
def test_ltx_posterior_draw_is_seeded_and_mode_is_an_option():
    torch.manual_seed(0)
    vae = vae_mod.tiny_ltx_vae()
    mu, sd = vae.posterior(sample_video())

    def draw(seed):
        return vae.encode(sample_video(), [torch.Generator().manual_seed(seed)])

    a, b, c = draw(5), draw(5), draw(6)
    noise = torch.randn(mu.shape[1:], generator=torch.Generator().manual_seed(5))[None]
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.allclose(a, vae.normalise(mu + sd * noise), atol=1e-6)
    assert torch.allclose(vae.encode(sample_video()), vae.normalise(mu))                # no generators: the mode
    vae.sample_posterior = False
    assert torch.allclose(draw(5), vae.normalise(mu))                          # option: the mode
    wan = vae_mod.tiny_wan_vae()                                                       # Pro: always the mode
    assert torch.equal(wan.encode(sample_video(), [torch.Generator().manual_seed(5)]), wan.encode(sample_video()))
