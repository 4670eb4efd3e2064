"""Classifier-free guidance: s = 1 is the conditional model, s = 0 the unconditional one, any s is
``out_u + s (out_c - out_u)``, both branches in ONE batched forward; variance channels come from
the conditional branch. The null condition and condition dropout."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from layoutdiffuse.layout import IGNORE, PAD
from layoutdiffuse.diffusion import GaussianDiffusion, classifier_free_guidance, conditioned, make_sampler
from layoutdiffuse.diffusion.guidance import drop_condition, null_condition


class LayoutToy(nn.Module):
    """``out = [x * a + f(layout) + t/1000, tanh(x) - f(layout)]`` with ``f`` = per-image sum over real
    boxes of ``(class + 1) * (x + 2y + 3w + 4h)`` (padding rows, class -1, ignored); counts calls."""

    def __init__(self, channels: int = 2):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.9))
        self.channels = channels
        self.calls: list[int] = []

    def forward(self, x, t, cond):
        self.calls.append(x.shape[0])
        layout = cond["layout"]
        valid = (layout[..., 4] >= 0).float()
        f = (valid * (layout[..., 4] + 1) * (layout[..., :4] @ torch.tensor([1.0, 2.0, 3.0, 4.0]))).sum(1)
        f = f.view(-1, 1, 1, 1)
        pred = x * self.a + f + t.float().view(-1, 1, 1, 1) / 1000
        return torch.cat([pred, torch.tanh(x) - f], 1) if self.channels == 2 else pred


def toy_batch(b=3):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 1, 4, 4, generator=g)
    t = torch.tensor([5, 500, 999][:b])
    layout = torch.tensor(
        [[[0.1, 0.1, 0.3, 0.3, 2.0], [0.5, 0.5, 0.2, 0.4, 0.0]],
         [[0.0, 0.2, 0.5, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0, PAD]],
         [[0.3, 0.3, 0.1, 0.1, 4.0], [0.2, 0.1, 0.6, 0.7, 3.0]]]
    )[:b]
    return x, t, {"layout": layout}


@pytest.mark.parametrize("channels", [1, 2])
def test_guidance_scale_one_is_conditional_and_zero_is_unconditional(channels):
    model = LayoutToy(channels)
    x, t, cond = toy_batch()
    null = null_condition(cond)
    assert null["layout"].shape == (3, 0, 5)
    with torch.no_grad():
        out_c, out_u = model(x, t, cond), model(x, t, null)
        assert (out_c - out_u).abs().max() > 0.1  # the toy really depends on the layout
        model.calls.clear()
        s1 = classifier_free_guidance(model, cond, null, 1.0, pred_channels=1)(x, t)
        assert model.calls == [3]  # s = 1 skips the unconditional branch
        model.calls.clear()
        s0 = classifier_free_guidance(model, cond, null, 0.0, pred_channels=1)(x, t)
        assert model.calls == [6]  # one forward, both branches batched
        model.calls.clear()
        s5 = classifier_free_guidance(model, cond, null, 5.0, pred_channels=1)(x, t)
        assert model.calls == [6]
    torch.testing.assert_close(s1, out_c, rtol=0, atol=1e-6)
    torch.testing.assert_close(s0[:, :1], out_u[:, :1], rtol=0, atol=1e-6)
    torch.testing.assert_close(s5[:, :1], out_u[:, :1] + 5.0 * (out_c[:, :1] - out_u[:, :1]), rtol=0, atol=1e-5)
    if channels == 2:  # variance channels are the conditional branch's, for any scale
        torch.testing.assert_close(s0[:, 1:], out_c[:, 1:], rtol=0, atol=1e-6)
        torch.testing.assert_close(s5[:, 1:], out_c[:, 1:], rtol=0, atol=1e-6)


def test_guidance_with_differently_sized_layouts_pads_in_one_batch():
    model = LayoutToy(1)
    x, t, cond = toy_batch()
    other = {"layout": torch.tensor([[[0.2, 0.2, 0.2, 0.2, 1.0]]] * 3)}  # N = 1 against N = 2
    with torch.no_grad():
        out_c, out_o = model(x, t, cond), model(x, t, other)
        model.calls.clear()
        g = classifier_free_guidance(model, cond, other, 2.0)(x, t)
    assert model.calls == [6]
    torch.testing.assert_close(g, out_o + 2.0 * (out_c - out_o), rtol=0, atol=1e-5)


def test_guided_sampling_equals_sampling_the_combined_eps():
    """A whole DDIM trajectory with guidance equals one with a hand-made eps_u + s (eps_c - eps_u)."""
    d = GaussianDiffusion("linear", 1000)
    model = LayoutToy(1)
    x_T, _, cond = toy_batch()
    null = null_condition(cond)

    def by_hand(x, t):
        return model(x, t, null) + 3.0 * (model(x, t, cond) - model(x, t, null))

    sampler = make_sampler("ddim", d, steps=10)
    with torch.no_grad():
        a = sampler.sample(classifier_free_guidance(model, cond, null, 3.0), x_T.shape, x_T=x_T)
        b = sampler.sample(by_hand, x_T.shape, x_T=x_T)
        c = sampler.sample(conditioned(model, cond), x_T.shape, x_T=x_T)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - c).abs().max() > 1e-3


def test_null_condition_of_masks_and_captions():
    cond = {"layout": torch.ones(2, 3, 5), "mask": torch.zeros(2, 4, 4, dtype=torch.long), "caption": ["a cat", "a dog"], "context": torch.ones(2, 7, 8)}
    null = null_condition(cond)
    assert null["layout"].shape == (2, 0, 5)
    assert (null["mask"] == IGNORE).all() and null["caption"] == ["", ""] and not null["context"].any()


def test_drop_condition_probability_and_per_sample_consistency():
    b = 4000
    layout = torch.tensor([0.1, 0.1, 0.5, 0.5, 3.0]).repeat(b, 2, 1)
    cond = {"layout": layout, "mask": torch.ones(b, 2, 2, dtype=torch.long), "caption": ["x"] * b}
    out = drop_condition(cond, 0.25, torch.Generator().manual_seed(0))
    dropped = (out["layout"][..., 4] == PAD).all(1)
    assert abs(dropped.float().mean().item() - 0.25) < 0.03
    assert torch.equal(dropped, (out["mask"] == IGNORE).flatten(1).all(1))  # the same samples lose everything
    assert torch.equal(dropped, torch.tensor([c == "" for c in out["caption"]]))
    assert torch.equal(out["layout"][~dropped], layout[~dropped])
    assert not drop_condition(cond, 0.0)["layout"][..., 4].eq(PAD).any()
    assert drop_condition(cond, 1.0)["layout"][..., 4].eq(PAD).all()
