"""Editing by layout (layoutdiffuse.editing) and masked sampling (diffusion.inpaint): the edit region
against a naive per-pixel twin, the kept pixels exact, masked sampling against plain sampling and
against the exact conditional of correlated Gaussian data, user errors, and the CLI."""
from __future__ import annotations

import json

import pytest
import torch

import layoutdiffuse
from layoutdiffuse import cli
from layoutdiffuse.diffusion import GaussianDiffusion, make_sampler
from layoutdiffuse.diffusion.inpaint import masked_sample
from layoutdiffuse.editing import EDGE, box_mask, changed_rows, edit_images, edit_region, load_image, save_image
from layoutdiffuse.errors import UserError
from layoutdiffuse.layout import pad_layouts
from layoutdiffuse.sampling import load_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny ops: one thread is fastest (tests/conftest.py)


def naive_box_mask(layout: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel (r, c) is covered when the box overlaps its square by more than EDGE (in pixels) on both axes."""
    out = torch.zeros(height, width, dtype=torch.bool)
    for x, y, w, h, cls in layout.tolist():
        if cls < 0:
            continue
        for r in range(height):
            for c in range(width):
                ox = min((x + w) * width, c + 1) - max(x * width, c)
                oy = min((y + h) * height, r + 1) - max(y * height, r)
                out[r, c] |= ox > EDGE and oy > EDGE
    return out


def test_box_mask_matches_the_naive_twin():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 4, 2, generator=g) * 0.7
    wh = torch.rand(3, 4, 2, generator=g) * 0.3 + 0.02
    layouts = torch.cat([xy, wh, torch.randint(-1, 10, (3, 4, 1), generator=g).float()], -1)
    layouts[0, 0] = torch.tensor([0.25, 0.5, 0.25, 0.125, 3.0])  # edges exactly on pixel boundaries (32 px)
    mask = box_mask(layouts, 32, 24)
    assert mask.shape == (3, 1, 32, 24)
    for b in range(3):
        assert torch.equal(mask[b, 0], naive_box_mask(layouts[b], 32, 24))
    on_grid = box_mask(layouts[:1, :1], 32, 32)[0, 0]
    assert on_grid.sum() == 8 * 4 and on_grid[16:20, 8:16].all()  # exactly the box's pixels


def row(x, y, w, h, c):
    return [x, y, w, h, float(c)]


def test_changed_rows_for_each_kind_of_edit():
    old = torch.tensor([[row(0.1, 0.1, 0.3, 0.3, 7), row(0.5, 0.5, 0.3, 0.3, 2)]])
    cases = {  # new layout -> (old changed, new changed)
        "move": ([row(0.2, 0.1, 0.3, 0.3, 7), row(0.5, 0.5, 0.3, 0.3, 2)], [True, False], [True, False]),
        "relabel": ([row(0.1, 0.1, 0.3, 0.3, 1), row(0.5, 0.5, 0.3, 0.3, 2)], [True, False], [True, False]),
        "remove": ([row(0.5, 0.5, 0.3, 0.3, 2), row(0, 0, 0, 0, -1)], [True, False], [False, False]),
        "add": ([row(0.1, 0.1, 0.3, 0.3, 7), row(0.5, 0.5, 0.3, 0.3, 2), row(0.6, 0.1, 0.2, 0.2, 4)], [False, False], [False, False, True]),
        "reorder": ([row(0.5, 0.5, 0.3, 0.3, 2), row(0.1, 0.1, 0.3, 0.3, 7)], [False, False], [False, False]),
    }
    for name, (new_rows, old_changed, new_changed) in cases.items():
        new = torch.tensor([new_rows])
        assert changed_rows(old, new)[0].tolist() == old_changed, name
        assert changed_rows(new, old)[0].tolist() == new_changed, name
    # the region of a move: the old box and the new one
    new = torch.tensor([cases["move"][0]])
    expected = box_mask(old[:, :1], 32, 32) | box_mask(new[:, :1], 32, 32)
    assert torch.equal(edit_region(old, new, 32, 32), expected)


def test_masked_sampling_keeps_everything_or_nothing():
    d = GaussianDiffusion("linear", 1000)
    fn = lambda x, t: 0.3 * x  # noqa: E731  any model: the checks below hold for every model
    known = torch.rand(2, 1, 4, 4) * 2 - 1
    everything = masked_sample(make_sampler("ancestral", d, steps=5), fn, known, torch.ones(2, 1, 4, 4, dtype=torch.bool),
                               generator=torch.Generator().manual_seed(0), resample=2)
    assert torch.equal(everything, known)
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    for name in ("ddim", "dpm++", "plms"):  # deterministic: keeping nothing is plain sampling from the same x_T
        plain = make_sampler(name, d, steps=6).sample(fn, known.shape, x_T=x_T.clone())
        masked = masked_sample(make_sampler(name, d, steps=6), fn, known, torch.zeros_like(known, dtype=torch.bool), x_T=x_T.clone())
        assert torch.allclose(plain, masked, atol=1e-6), name
    with pytest.raises(UserError, match="resample must be >= 0"):
        masked_sample(make_sampler("ddim", d, steps=3), fn, known, known > 0, resample=-1)


RHO, KNOWN = 0.9, 1.5


def correlated_eps(d: GaussianDiffusion):
    """The exact noise predictor of 2-pixel data N(0, [[1, RHO], [RHO, 1]]): eps* = sqrt(1 - abar) C^-1 x_t,
    C = abar Sigma + (1 - abar) I."""
    abar = torch.cumprod(1 - d.betas64, 0)
    sigma = torch.tensor([[1.0, RHO], [RHO, 1.0]], dtype=torch.float64)

    def model_fn(x, t):
        a = abar[t].view(-1, 1, 1)
        cov = a * sigma + (1 - a) * torch.eye(2, dtype=torch.float64)
        return ((1 - a).sqrt() * torch.linalg.solve(cov, x.double().reshape(-1, 2, 1))).reshape(x.shape).float()

    return model_fn


def test_resampling_approaches_the_exact_conditional():
    """Keep pixel 0 at KNOWN: the exact conditional of pixel 1 has mean RHO * KNOWN = 1.35. Plain
    replacement (RePaint without resampling) is biased towards the prior; resampling passes reduce
    the bias step by step (measured: 0.91, 1.12, 1.26, 1.31 for 0, 1, 4, 9 passes, 20000 samples)."""
    d = GaussianDiffusion("linear", 1000)
    known = torch.zeros(4000, 1, 1, 2)
    known[..., 0] = KNOWN
    keep = torch.zeros_like(known, dtype=torch.bool)
    keep[..., 0] = True
    errors = []
    for passes in (0, 1, 4, 9):
        out = masked_sample(make_sampler("ancestral", d, steps=50), correlated_eps(d), known, keep,
                            generator=torch.Generator().manual_seed(0), resample=passes)
        assert (out[..., 0] == KNOWN).all()
        errors.append(abs(out[..., 1].mean().item() - RHO * KNOWN))
    assert errors == sorted(errors, reverse=True), errors
    assert errors[0] > 0.3 and errors[-1] < 0.08, errors


@pytest.fixture(scope="module")
def shipped():
    return load_model()


@pytest.fixture(scope="module")
def canvas():
    """A real-looking input: a sample of the shipped model for a two-digit layout (2 dpm++ steps: fast)."""
    layout = [{"label": "7", "box": [0.1, 0.1, 0.4, 0.6]}, {"label": "2", "box": [0.55, 0.35, 0.4, 0.55]}]
    images, _ = layoutdiffuse.sample(layout, n=1, steps=3, seed=0)
    return images[0], layout


def test_edit_keeps_the_pixels_outside_the_changed_boxes(shipped, canvas):
    image, layout = canvas
    moved = [layout[0], {"label": "2", "box": [0.5, 0.05, 0.4, 0.55]}]
    edited = layoutdiffuse.edit(image, layout, moved, ckpt=shipped, n=2, steps=3, seed=1)
    assert edited.shape == (2, 1, 32, 32)
    names = shipped.class_names
    from layoutdiffuse.sampling import as_layout

    old, new = pad_layouts([as_layout(layout, names), as_layout(moved, names)])
    region = edit_region(old[None], new[None], 32, 32)[0, 0]
    assert 0 < region.sum() < 32 * 32
    assert torch.equal(edited[:, :, ~region], image[None].expand(2, -1, -1, -1)[:, :, ~region])  # exact
    assert (edited[:, :, region] - image[None, :, region]).abs().mean() > 0.05  # the changed region did change
    assert not torch.equal(edited[0], edited[1])  # two versions


def test_edit_images_batches_and_resamples(shipped, canvas):
    image, layout = canvas
    names = shipped.class_names
    from layoutdiffuse.sampling import as_layout

    old = as_layout(layout, names)
    relabel, remove = old.clone(), old[1:]
    relabel[0, 4] = 1
    olds = pad_layouts([old, old])
    news = pad_layouts([relabel, remove])
    edited, region = edit_images(shipped, image[None].expand(2, -1, -1, -1), olds, news, sampler="ddim", steps=3, resample=1,
                                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(region, edit_region(olds, news, 32, 32))
    keep = ~region.expand_as(edited)
    assert torch.equal(edited[keep], image[None].expand(2, -1, -1, -1)[keep])


def test_edit_user_errors(shipped, canvas):
    image, layout = canvas
    with pytest.raises(UserError, match="nothing to edit: the new layout has the same objects"):
        layoutdiffuse.edit(image, layout, list(reversed(layout)), ckpt=shipped, steps=2)
    with pytest.raises(UserError, match=r"^the image is 1x28x28 \(CxHxW\) but the model makes 1x32x32 images; .*sample --save-images"):
        layoutdiffuse.edit(torch.zeros(1, 28, 28), layout, layout[:1], ckpt=shipped, steps=2)
    with pytest.raises(UserError, match="edit takes one image"):
        layoutdiffuse.edit(torch.zeros(2, 1, 32, 32), layout, layout[:1], ckpt=shipped, steps=2)


def test_cli_edit_round_trip(tmp_path, shipped, canvas, capsys):
    image, layout = canvas
    save_image(image, tmp_path / "in.png")
    assert torch.allclose(load_image(tmp_path / "in.png", 1), image, atol=1 / 127.5)
    (tmp_path / "old.json").write_text(json.dumps(layout))
    (tmp_path / "new.json").write_text(json.dumps(layout[:1]))  # remove the 2
    args = ["edit", "--image", str(tmp_path / "in.png"), "--layout", str(tmp_path / "old.json"), "--new-layout", str(tmp_path / "new.json"),
            "--steps", "2", "--out", str(tmp_path / "out.png"), "--grid", str(tmp_path / "grid.png")]
    assert cli.main(args) == 0
    original, edited = load_image(tmp_path / "in.png", 1), load_image(tmp_path / "out.png", 1)
    from layoutdiffuse.sampling import as_layout

    region = box_mask(as_layout(layout[1:], shipped.class_names)[None], 32, 32)[0]
    assert torch.equal(edited[~region.expand_as(edited)], original[~region.expand_as(original)])
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")
    save_image(torch.zeros(1, 16, 16), tmp_path / "small.png")
    capsys.readouterr()
    assert cli.main([*args[:2], str(tmp_path / "small.png"), *args[3:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the image is 1x16x16 (CxHxW) but the model makes 1x32x32 images; ")
    assert "sample --save-images DIR" in err[0]
