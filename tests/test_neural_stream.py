"""Chunk loop and NeuralRenderer on tiny CPU engines; weights check and CLI on tiny folders."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from flashhead import constants as C
from flashhead.errors import BackendUnavailable, InputError
from flashhead.render.base import SpeechSpan
from flashhead.render.neural.cli import add_cli
from flashhead.visemes.base import FrameFeatures

from lazy_imports import lazy_import

torch = lazy_import("torch")
sampler_mod = lazy_import("flashhead.render.neural.sampler")
stream_mod = lazy_import("flashhead.render.neural.stream")
dit = lazy_import("flashhead.render.neural.dit")
renderer = lazy_import("flashhead.render.neural.renderer")
tiny = lazy_import("flashhead.render.neural.tiny")
weights = lazy_import("flashhead.render.neural.weights")

RNG = np.random.default_rng(0)
PORTRAIT = RNG.integers(0, 255, (80, 96, 3), dtype=np.uint8)


def speech(n_frames: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n_frames * C.SAMPLES_PER_FRAME) * 0.1).astype(np.float32)


def span(start: int, n: int, seed: int = 0) -> SpeechSpan:
    return SpeechSpan(start, FrameFeatures.zeros(n), speech(n, seed))


def test_variant_geometry():
    pro, lite = stream_mod.VARIANTS["pro"], stream_mod.VARIANTS["lite"]
    assert (pro.motion_frames, pro.new_frames, pro.latent_frames) == (5, 28, 9)
    assert (lite.motion_frames, lite.new_frames, lite.latent_frames) == (9, 24, 5)


@pytest.mark.parametrize("variant", ["pro", "lite"])
@pytest.mark.slow
def test_chunk_k_plus_1_starts_from_chunk_k_motion(variant, monkeypatch):
    engine = tiny.build_tiny_engine(variant)
    portrait = engine.prepare(PORTRAIT)
    state = engine.new_stream(portrait, seed=5)
    assert state.ref.shape[2] == stream_mod.VARIANTS[variant].latent_frames
    seen = []
    real = sampler_mod.sample

    def spy(velocity, shape, motion, generators, sigmas, dtype):
        seen.append(motion.clone())
        out = real(velocity, shape, motion, generators, sigmas, dtype)
        seen.append(out.clone())
        return out

    monkeypatch.setattr("flashhead.render.neural.stream.sample", spy)
    v = stream_mod.VARIANTS[variant]
    frames = engine.step([state], [speech(v.new_frames)])
    assert frames.shape == (1, v.new_frames, 64, 64, 3) and frames.dtype == np.uint8
    assert torch.equal(seen[0], state.ref[:, :, :1])           # chunk 0: reference frame 0
    assert torch.equal(seen[1][:, :, :1], state.ref[:, :, :1])  # written once more before decoding
    motion_after_0 = state.motion.clone()
    assert motion_after_0.shape[2] == 2
    engine.step([state], [speech(v.new_frames, 1)])
    assert torch.equal(seen[2], motion_after_0)                      # chunk 1 starts from chunk 0's motion
    assert torch.equal(seen[3][:, :, :2], motion_after_0)
    assert state.chunks == 2


@pytest.mark.slow
def test_batched_sessions_match_single_sessions():
    engine = tiny.build_tiny_engine("lite")
    portrait = engine.prepare(PORTRAIT)
    a, b = engine.new_stream(portrait, 1), engine.new_stream(portrait, 2)
    both = engine.step([a, b], [speech(24, 0), speech(24, 1)])
    c = engine.new_stream(portrait, 2)
    alone = engine.step([c], [speech(24, 1)])
    assert np.abs(both[1].astype(int) - alone[0].astype(int)).max() <= 1
    assert not np.array_equal(both[0], both[1])


def run_renderer(seed: int, sizes=(8, 8, 8, 8, 20)) -> tuple[np.ndarray, renderer.NeuralRenderer]:
    r = renderer.NeuralRenderer.tiny("lite")
    r.setup()
    session = r.new_session(r.prepare(PORTRAIT, 0), seed)
    outs, start = [], 0
    for i, n in enumerate(sizes):
        out = r.render(session, span(start, n, i))
        assert out.shape == (n, C.SIZE, C.SIZE, 3)
        outs.append(out)
        start += n
    outs.append(r.flush(session))
    assert session.frames_out == start + r.latency_frames
    return np.concatenate(outs), r


@pytest.mark.slow
def test_renderer_frames_latency_and_determinism():
    a, r = run_renderer(7)
    b, _ = run_renderer(7)
    c, _ = run_renderer(8)
    lat = r.latency_frames
    assert r.name == "flashhead-lite" and lat == 23
    assert len(a) == 52 + lat
    assert np.array_equal(a, b) and not np.array_equal(a[lat:], c[lat:])
    assert np.array_equal(a[0], a[lat - 1])                   # still lead-in frames
    with pytest.raises(InputError):
        r.render(r.new_session(r.prepare(PORTRAIT, 0), 0), SpeechSpan(0, FrameFeatures.zeros(2), np.zeros(5)))


def test_setup_fails_clearly_at_start_up(tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="CUDA"):
            renderer.NeuralRenderer("pro", weights_dir=tmp_path, device="cuda").setup()
    with pytest.raises(BackendUnavailable, match="weights-dir"):
        renderer.NeuralRenderer("lite", device="cpu").setup()
    with pytest.raises(BackendUnavailable, match="weights download --variant lite`"):
        renderer.NeuralRenderer("lite", device="cpu").setup()
    with pytest.raises(BackendUnavailable, match="Model_Lite/config.json") as info:
        renderer.NeuralRenderer("lite", weights_dir=tmp_path, device="cpu").setup()
    hint = info.value.args[0].splitlines()[-1]
    assert hint.startswith("missing or incomplete: Model_Lite/config.json, Model_Lite/diffusion_pytorch_model")
    assert hint.endswith(f"fetch with `flashhead weights download --variant lite --dir {tmp_path}`")
    with pytest.raises(InputError):
        renderer.NeuralRenderer("ultra")


def test_weights_check_reports_wrong_keys(tmp_path):
    from safetensors.torch import save_file
    config = dit.tiny_config("lite")
    torch.manual_seed(0)
    model = dit.FlashHeadDiT(**config)
    model.save_pretrained(tmp_path / "Model_Lite")
    assert weights.check_weights(tmp_path, "lite", dit_config=config).files[1].ok
    state = model.state_dict()
    state.pop("blocks.0.self_attn.q.weight")
    state["blocks.0.self_attn.rope"] = torch.zeros(1)
    state["audio_proj.norm.weight"] = torch.zeros(5)
    save_file(state, str(tmp_path / "Model_Lite" / "diffusion_pytorch_model.safetensors"))
    report = weights.check_weights(tmp_path, "lite", dit_config=config)
    dit_check = report.files[1]
    assert not report.ok and dit_check.present
    assert dit_check.keys.missing == ["blocks.0.self_attn.q.weight"]
    assert dit_check.keys.unexpected == ["blocks.0.self_attn.rope"]
    assert dit_check.keys.mismatched == [("audio_proj.norm.weight", (32,), (5,))]
    text = report.format()
    assert "VAE_LTX/config.json" in text and "wav2vec2" in text and "blocks.0.self_attn.rope" in text
    # truncated file: size disagrees with the header
    path = tmp_path / "Model_Lite" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    assert any("truncated" in p for p in weights.check_weights(tmp_path, "lite", config).files[1].problems)
    # against the released model every tiny tensor is wrong, and the config is flagged
    full = weights.check_weights(tmp_path, "lite")
    assert "config differs" in full.format() and len(full.files[1].keys.missing) > 700


def test_cli_manifest_and_check(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["weights", "manifest", "--variant", "pro"])
    assert args.func(args) == 0
    shapes = json.loads(capsys.readouterr().out)
    assert len(shapes) == 843 and shapes["patch_embedding.weight"] == [1536, 32, 1, 2, 2]
    args = parser.parse_args(["weights", "check", str(tmp_path), "--variant", "lite", "--json"])
    assert args.func(args) == 1
    report = json.loads(capsys.readouterr().out)[0]
    assert report["ok"] is False and report["files"][0]["path"] == "Model_Lite/config.json"


@pytest.mark.slow
def test_reference_and_motion_latents_are_drawn_from_the_session_seed(monkeypatch):
    engine = tiny.build_tiny_engine("lite")
    portrait = engine.prepare(PORTRAIT)
    a, b, c = (engine.new_stream(portrait, s) for s in (5, 5, 6))
    expected = engine.vae.latent_from(*portrait.posterior, [torch.Generator().manual_seed(5)])
    assert torch.equal(a.ref, expected) and torch.equal(a.ref, b.ref) and not torch.allclose(a.ref, c.ref)
    mode = tiny.build_tiny_engine("lite", sample_posterior=False)
    assert torch.equal(mode.new_stream(portrait, 5).ref, mode.new_stream(portrait, 6).ref)
    # the colour-corrected chunk is re-encoded with each session's generator, from the raw decode
    seen = {}
    real_match = stream_mod.match_colors

    def spy(video, stats, strength):
        seen["decoded"] = video.clone()
        return real_match(video, stats, strength)

    monkeypatch.setattr("flashhead.render.neural.stream.match_colors", spy)
    latents = torch.randn(1, 4, 5, 2, 2) * 3
    state = engine.new_stream(portrait, 5)
    engine.finish([state], latents)
    assert torch.equal(seen["decoded"], engine.vae.decode(latents))     # not clamped before correction
    assert seen["decoded"].abs().max() > 1
    tail = real_match(seen["decoded"], portrait.color, 1.0)[:, :, -9:]
    gen = torch.Generator().manual_seed(5)
    engine.vae.latent_from(*portrait.posterior, [gen])                   # the reference draw came first
    assert torch.equal(state.motion, engine.vae.encode(tail, [gen]))


def test_uint8_conversion_truncates_like_the_original():
    levels = torch.tensor([0.0, 254.99, 127.6, 255.0, -3.0, 300.0]) / 127.5 - 1
    got = stream_mod.to_uint8(levels.view(1, 1, 6, 1, 1).expand(1, 3, 6, 1, 1))
    assert got[0, :, 0, 0, 0].tolist() == [0, 254, 127, 255, 0, 255]
