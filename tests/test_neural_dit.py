"""FlashHeadDiT: official names/shapes at full size (meta device), tiny-config numerics on CPU."""
from __future__ import annotations

import math

import pytest

from flashhead.errors import BackendUnavailable

from lazy_imports import lazy_import

torch = lazy_import("torch")
dit = lazy_import("flashhead.render.neural.dit")
layers = lazy_import("flashhead.render.neural.layers")
weights = lazy_import("flashhead.render.neural.weights")


def official_keys(num_layers: int = 30) -> set[str]:
    """The key list of the model facts, spelled out independently of the model code."""
    keys = {"patch_embedding.weight", "patch_embedding.bias", "time_projection.1.weight",
            "time_projection.1.bias", "head.head.weight", "head.head.bias", "head.modulation"}
    for mod in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
                "audio_emb.proj.0", "audio_emb.proj.1", "audio_emb.proj.3", "audio_emb.proj.4",
                "audio_proj.proj1", "audio_proj.proj1_vf", "audio_proj.proj2", "audio_proj.proj3",
                "audio_proj.norm"):
        keys |= {f"{mod}.weight", f"{mod}.bias"}
    for i in range(num_layers):
        b = f"blocks.{i}"
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                keys |= {f"{b}.{attn}.{lin}.weight", f"{b}.{attn}.{lin}.bias"}
            keys |= {f"{b}.{attn}.norm_q.weight", f"{b}.{attn}.norm_k.weight"}
        keys |= {f"{b}.norm3.weight", f"{b}.norm3.bias", f"{b}.ffn.0.weight", f"{b}.ffn.0.bias",
                 f"{b}.ffn.2.weight", f"{b}.ffn.2.bias", f"{b}.modulation"}
    return keys


@pytest.mark.parametrize("variant,params", [("pro", 1_507_694_912), ("lite", 1_526_864_256)])
def test_full_size_manifest_counts(variant, params):
    shapes = weights.manifest(variant)
    assert len(shapes) == 843
    assert sum(math.prod(s) for s in shapes.values()) == params
    assert set(shapes) == official_keys()


@pytest.mark.parametrize("variant,documented", [
    ("pro", {"patch_embedding.weight": (1536, 32, 1, 2, 2), "head.head.weight": (64, 1536),
             "audio_proj.proj1_vf.weight": (512, 73728)}),
    ("lite", {"patch_embedding.weight": (1536, 256, 1, 1, 1), "head.head.weight": (128, 1536),
              "audio_proj.proj1_vf.weight": (512, 110592)}),
])
def test_full_size_documented_shapes(variant, documented):
    shapes = weights.manifest(variant)
    common = {"text_embedding.0.weight": (1536, 4096), "text_embedding.2.weight": (1536, 1536),
              "time_embedding.0.weight": (1536, 256), "time_embedding.2.weight": (1536, 1536),
              "time_projection.1.weight": (9216, 1536), "blocks.29.ffn.0.weight": (8960, 1536),
              "blocks.0.ffn.2.weight": (1536, 8960), "blocks.7.modulation": (1, 6, 1536),
              "head.modulation": (1, 2, 1536), "audio_proj.proj1.weight": (512, 46080),
              "audio_proj.proj2.weight": (512, 512), "audio_proj.proj3.weight": (49152, 512),
              "audio_proj.norm.weight": (1536,), "audio_emb.proj.1.weight": (768, 768),
              "audio_emb.proj.3.weight": (1536, 768)}
    for key, shape in {**common, **documented}.items():
        assert shapes[key] == shape, key


def tiny_inputs(variant: str, batch: int = 1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    f, hw = (9, 8) if variant == "pro" else (5, 4)
    x = torch.randn(batch, 4, f, hw, hw, generator=g)
    y = torch.randn(batch, 4, f, hw, hw, generator=g)
    ctx = torch.randn(batch, 33, 5, 2, 16, generator=g)
    return x, y, ctx


def tiny_model(variant: str, seed: int = 0) -> dit.FlashHeadDiT:
    torch.manual_seed(seed)
    return dit.FlashHeadDiT(**dit.tiny_config(variant)).eval()


@pytest.mark.parametrize("variant", ["pro", "lite"])
def test_forward_shapes_and_determinism(variant):
    model = tiny_model(variant)
    x, y, ctx = tiny_inputs(variant, batch=2)
    with torch.no_grad():
        a = model(x, torch.tensor([1000.0, 625.0]), ctx, y)
        b = model(x, torch.tensor([1000.0, 625.0]), ctx, y)
    assert a.shape == x.shape
    assert torch.equal(a, b)
    assert model.audio_context(ctx).shape == (2, x.shape[2], 4, 32)


def test_change_detector_recorded_slice():
    """A CHANGE DETECTOR, not a correctness check: the slice was recorded once from this very
    implementation, so it flags any change of the tiny forward pass, right or wrong. When a
    deliberate change moves it, re-record it; correctness is checked by the independent tests
    (hand-computed RoPE entry and timestep embedding, mask layout, dense-attention reference)."""
    model = tiny_model("pro")
    x, y, ctx = tiny_inputs("pro")
    with torch.no_grad():
        out = model(x, 937.5, ctx, y)
    got = out[0, :2, 3, 2, :4].flatten()
    assert torch.allclose(got, torch.tensor(RECORDED_SLICE), atol=1e-4), got.tolist()


# Recorded from this implementation (seed 0 weights, seed 1 inputs, timestep 937.5): see above.
RECORDED_SLICE = [0.205953, 0.194539, -0.094381, -0.16122, -1.074613, 0.405808, -0.214096, 0.083233]


def test_rope_table_entry_by_hand():
    """Wan 3D RoPE at full size (head_dim 128 -> 22/21/21 complex frequencies, theta 10000, each
    axis over its own dimension: 44, 42, 42), token (f=0, h=2, w=1) of a (2, 3, 4) grid,
    worked out with math.pow rather than the implementation's tensors."""
    table = layers.rope_table((2, 3, 4), head_dim=128)
    token = table[0 * 12 + 2 * 4 + 1, 0]                       # row-major (f, h, w)
    angles = token.angle()
    assert torch.allclose(token[:22], torch.ones(22, dtype=torch.complex128))      # f = 0
    hand = {22 + 0: 2.0,                                       # height, frequency 0: 2 * 1
            22 + 1: 2 * math.pow(10000, -2 / 42),              # = 1.28989...
            22 + 20: 2 * math.pow(10000, -40 / 42),
            43 + 0: 1.0,                                       # width, frequency 0
            43 + 7: 1 * math.pow(10000, -14 / 42)}
    for col, angle in hand.items():
        assert abs(angles[col].item() - angle) < 1e-12, (col, angles[col].item(), angle)
    assert abs(hand[23] - 1.28989) < 1e-5                      # the by-hand figure itself
    # and the time axis over 44: token (f=1, h=0, w=0), frequency 3
    assert abs(table[12, 0, 3].angle().item() - math.pow(10000, -6 / 44)) < 1e-12


def test_timestep_embedding_by_hand():
    """Wan's sinusoidal embedding [cos | sin] of t with frequencies 10000^(-j/half)."""
    emb = layers.sinusoidal_embedding(torch.tensor([500.0]), 256)[0]
    assert emb.shape == (256,) and emb.dtype == torch.float64
    hand = {0: math.cos(500.0), 1: math.cos(500.0 * math.pow(10000, -1 / 128)),
            128: math.sin(500.0), 128 + 64: math.sin(5.0),       # 500 * 10000^(-1/2) = 5
            255: math.sin(500.0 * math.pow(10000, -127 / 128))}
    for i, value in hand.items():
        assert abs(emb[i].item() - value) < 1e-9, (i, emb[i].item(), value)
    assert abs(hand[128 + 64] - (-0.958924)) < 1e-6              # sin(5), by hand


def test_cross_attention_mask_layout():
    """Which audio tokens each video token of a DiT block sees, read off the block itself by
    perturbing one audio token at a time: latent frame f sees exactly frame f's audio tokens."""
    torch.manual_seed(0)
    block = layers.DiTBlock(dim=16, ffn_dim=32, num_heads=2).eval()
    frames, per_frame, n_audio = 2, 2, 3
    x = torch.randn(1, frames * per_frame, 16)
    audio = torch.randn(1, frames, n_audio, 16)
    t_mod = torch.zeros(1, 6, 16)
    t_mod[:, 2] = -block.modulation[0, 2].detach()            # gate1 = 0: no self-attention
    t_mod[:, 5] = -block.modulation[0, 5].detach()            # gate2 = 0: no feed-forward
    rope = layers.rope_table((frames, per_frame, 1), head_dim=8)
    with torch.no_grad():
        base = block(x, audio, t_mod, rope)
        seen = torch.zeros(frames * per_frame, frames * n_audio, dtype=torch.int64)
        for j in range(frames * n_audio):
            bumped = audio.clone().reshape(1, -1, 16)
            bumped[0, j] += 3.0
            out = block(x, bumped.reshape(audio.shape), t_mod, rope)
            seen[:, j] = ((out - base).abs().amax(-1)[0] > 1e-6).long()
    assert seen.tolist() == [[1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 1, 1],
                             [0, 0, 0, 1, 1, 1]]


def test_batch_elements_are_independent():
    model = tiny_model("lite")
    x, y, ctx = tiny_inputs("lite", batch=2)
    with torch.no_grad():
        both = model(x, 500.0, ctx, y)
        one = model(x[1:], 500.0, ctx[1:], y[1:])
    assert torch.allclose(both[1:], one, atol=1e-5)


def test_cross_attention_is_block_diagonal_per_latent_frame():
    torch.manual_seed(0)
    block = layers.DiTBlock(dim=16, ffn_dim=32, num_heads=2).eval()
    frames, per_frame, n_audio = 3, 4, 5
    x = torch.randn(1, frames * per_frame, 16)
    audio = torch.randn(1, frames, n_audio, 16)
    with torch.no_grad():
        got = block.cross_attn(block.norm3(x).reshape(frames, per_frame, 16), audio[0]).reshape(1, -1, 16)
        # reference: one dense attention over all audio tokens with a block-diagonal mask
        ca = block.cross_attn
        q = ca.norm_q(ca.q(block.norm3(x))).view(1, -1, 2, 8).transpose(1, 2)
        ctx = audio.reshape(1, -1, 16)
        k = ca.norm_k(ca.k(ctx)).view(1, -1, 2, 8).transpose(1, 2)
        v = ca.v(ctx).view(1, -1, 2, 8).transpose(1, 2)
        mask = torch.arange(frames).repeat_interleave(per_frame)[:, None] == \
            torch.arange(frames).repeat_interleave(n_audio)[None, :]
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        ref = ca.o(ref.transpose(1, 2).reshape(1, -1, 16))
    assert torch.allclose(got, ref, atol=1e-5)


def test_rope_split_table_and_rotation():
    assert layers.rope_split(128) == (22, 21, 21)
    table = layers.rope_table((2, 3, 4), head_dim=128)
    assert table.dtype == torch.complex128 and table.shape == (24, 1, 64)
    assert torch.allclose(table[0], torch.ones_like(table[0]))          # positions start at 0
    # token (f=1, h=0, w=0): only the 22 time frequencies rotate; their first one by 1 radian
    t1 = table[12, 0]
    assert torch.allclose(t1[:22].angle()[0], torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(t1[22:], torch.ones(42, dtype=torch.complex128))
    x = torch.randn(1, 24, 2, 128)
    rotated = layers.apply_rope(x, table)
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)


def test_strict_load_round_trip_and_clear_failure(tmp_path):
    from safetensors.torch import save_file
    model = tiny_model("lite", seed=3)
    model.save_pretrained(tmp_path / "Model_Lite")
    loaded = weights.load_dit(tmp_path / "Model_Lite", "cpu", torch.float32)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # diffusers' own loader reads the same folder
    assert isinstance(dit.FlashHeadDiT.from_pretrained(tmp_path / "Model_Lite"), dit.FlashHeadDiT)
    state = model.state_dict()
    state.pop("blocks.1.cross_attn.norm_k.weight")
    state["blocks.1.cross_attn.k_img.weight"] = torch.zeros(2)
    state["head.head.weight"] = torch.zeros(3, 32)
    save_file(state, str(tmp_path / "Model_Lite" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(BackendUnavailable) as err:
        weights.load_dit(tmp_path / "Model_Lite", "cpu", torch.float32)
    text = str(err.value)
    assert "1 missing key(s): blocks.1.cross_attn.norm_k.weight" in text
    assert "1 unexpected key(s): blocks.1.cross_attn.k_img.weight" in text
    assert "head.head.weight expected [4, 32] found [3, 32]" in text


def test_bf16_timestep_is_cast_to_the_model_dtype_before_embedding():
    model = tiny_model("lite").to(torch.bfloat16)
    x, y, ctx = tiny_inputs("lite")
    with torch.no_grad():
        out = {t: model(x, t, ctx, y) for t in (937.5, 936.0, 940.0, 833.3333, 832.0)}
    assert torch.equal(out[937.5], out[936.0])          # 937.5 is 936 in bf16, as in the original
    assert torch.equal(out[833.3333], out[832.0])
    assert not torch.equal(out[936.0], out[940.0])      # the timestep still matters
