"""The distilled 4-step sampler: exact sigmas, update rule, motion overwrite, seeded noise."""
from __future__ import annotations

import pytest

from lazy_imports import lazy_import

torch = lazy_import("torch")
sampler = lazy_import("flashhead.render.neural.sampler")


def test_exact_sigmas():
    assert sampler.shifted_sigmas(4, 5.0) == pytest.approx([1.0, 0.9375, 0.8333333333333334, 0.625, 0.0], abs=1e-12)
    assert sampler.shifted_sigmas(2, 5.0) == pytest.approx([1.0, 5 / 6, 0.0])
    with pytest.raises(ValueError):
        sampler.shifted_sigmas(0)


def test_update_rule_noise_draws_and_motion_overwrite():
    shape, sig = (1, 2, 3, 2, 2), sampler.shifted_sigmas()
    motion = torch.full((1, 2, 1, 2, 2), 7.0)
    seen = []

    def velocity(x, t):
        seen.append((x.clone(), t.clone()))
        return torch.full_like(x, 0.5)

    out = sampler.sample(velocity, shape, motion, [torch.Generator().manual_seed(3)], sig)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape[1:], generator=g)[None]                 # one initial draw
    sig32 = [torch.tensor(s).item() for s in sig]                 # t_i in the model dtype
    for i, (s, s_next) in enumerate(zip(sig32[:-1], sig32[1:])):
        x[:, :, :1] = 7.0
        assert torch.equal(seen[i][0], x) and seen[i][1].item() == pytest.approx(s * 1000)
        x = (1 - s_next) * (x - s * 0.5) + s_next * torch.randn(shape[1:], generator=g)[None]
    x[:, :, :1] = 7.0
    assert len(seen) == 4 and torch.allclose(out, x)
    assert torch.all(out[:, :, :1] == 7.0)


def test_seeded_and_batch_independent():
    shape = (2, 2, 3, 2, 2)
    motion = torch.zeros(2, 2, 2, 2, 2)

    def velocity(x, t):
        return x * 0.1 + t[:, None, None, None, None] / 1000

    a = sampler.sample(velocity, shape, motion, [torch.Generator().manual_seed(s) for s in (1, 2)], sampler.shifted_sigmas())
    b = sampler.sample(velocity, shape, motion, [torch.Generator().manual_seed(s) for s in (1, 2)], sampler.shifted_sigmas())
    one = sampler.sample(velocity, (1,) + shape[1:], motion[1:], [torch.Generator().manual_seed(2)], sampler.shifted_sigmas())
    assert torch.equal(a, b)
    assert torch.allclose(a[1:], one)
    assert not torch.allclose(a[0], a[1])


def test_bf16_sampler_casts_sigmas_like_the_original():
    shape, sig = (1, 2, 3, 2, 2), sampler.shifted_sigmas()
    motion = torch.zeros(1, 2, 1, 2, 2)
    seen = []

    def velocity(x, t):
        seen.append(t.item())
        return torch.full_like(x, 0.5)

    out = sampler.sample(velocity, shape, motion, [torch.Generator().manual_seed(3)], sig, torch.bfloat16)
    bf = [torch.tensor(s, dtype=torch.bfloat16).item() for s in sig]
    assert bf[2] == 0.83203125 and seen == pytest.approx([b * 1000 for b in bf[:-1]], abs=1e-9)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape[1:], generator=g)[None].to(torch.bfloat16)
    for s, s_next in zip(bf[:-1], bf[1:]):
        x[:, :, :1] = 0
        x = (1 - s_next) * (x - s * 0.5) + s_next * torch.randn(shape[1:], generator=g)[None].to(torch.bfloat16)
    x[:, :, :1] = 0
    assert out.dtype == torch.bfloat16 and torch.equal(out, x)
