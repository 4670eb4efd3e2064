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


# --- phrase models: a box's phrase is part of its row -------------------------------------------------

PHRASED = [{"text": "a red seven", "box": [0.1, 0.1, 0.4, 0.6]}, {"text": "2 in green", "box": [0.55, 0.35, 0.4, 0.55]}]
BLUE_SEVEN = [{"text": "a blue seven", "box": [0.1, 0.1, 0.4, 0.6]}, PHRASED[1]]  # "make the 7 blue"


@pytest.fixture(scope="module")
def phrase_module():
    """An untrained colour phrase model, every weight random (the zero-initialised layout attention
    too, so that a box's phrase changes what is drawn)."""
    from layoutdiffuse.notebook_helpers import random_color_model

    module = random_color_model(steps=3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for model in {id(m): m for m in (module.model, module.sampling_model)}.values():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


@pytest.fixture(scope="module")
def phrase_canvas(phrase_module):
    images, _ = layoutdiffuse.sample(PHRASED, n=1, ckpt=phrase_module, seed=0)
    return images[0]


def test_common_names_reindexes_into_one_list():
    from layoutdiffuse.editing import common_names

    a = torch.tensor([row(0.1, 0.1, 0.2, 0.2, 0), row(0.5, 0.5, 0.2, 0.2, 1), row(0, 0, 0, 0, -1)])
    b = torch.tensor([row(0.1, 0.1, 0.2, 0.2, 1), row(0.5, 0.5, 0.2, 0.2, 0)])
    (a2, b2), names = common_names([(a, ["red 7", "2 in green"]), (b, ["A  Blue 7", "2 in  GREEN"])], text=True)
    assert names == ["red 7", "2 in green", "A  Blue 7"]  # read alike -> one name, kept as first written
    assert torch.equal(a2, a) and b2[:, 4].tolist() == [1.0, 2.0] and torch.equal(b2[:, :4], b[:, :4])
    assert a2[2, 4] == -1  # padding stays padding
    (_, b3), names = common_names([(a, ["x", "X"]), (b, ["X", "x"])])  # class names: exact
    assert names == ["x", "X"] and b3[:, 4].tolist() == [0.0, 1.0]


def test_rephrasing_a_box_is_an_edit_of_that_box_only(phrase_module, phrase_canvas):
    from layoutdiffuse.editing import edit_layouts

    old, new, names = edit_layouts(phrase_module, PHRASED, BLUE_SEVEN)
    assert names == ["a red seven", "2 in green", "a blue seven"]
    assert changed_rows(old[None], new[None])[0].tolist() == [True, False]
    region = edit_region(old[None], new[None], 32, 32)[0, 0]
    assert torch.equal(region, box_mask(old[None, :1], 32, 32)[0, 0])  # the 7's box, nothing else
    edited = layoutdiffuse.edit(phrase_canvas, PHRASED, BLUE_SEVEN, ckpt=phrase_module, n=2, seed=1)
    assert edited.shape == (2, 3, 32, 32)
    keep = ~region.expand_as(phrase_canvas)
    assert torch.equal(edited[:, keep], phrase_canvas[None, keep].expand(2, -1))
    assert (edited[:, ~keep] - phrase_canvas[None, ~keep]).abs().mean() > 0.05
    # re-cased or re-spaced, a phrase reads the same: no edit
    same = [{"text": "A  Red SEVEN", "box": PHRASED[0]["box"]}, PHRASED[1]]
    with pytest.raises(UserError, match=r"nothing to edit: .*re-phrase"):
        layoutdiffuse.edit(phrase_canvas, PHRASED, same, ckpt=phrase_module)


def test_the_model_gets_each_images_phrases_with_its_rows(phrase_module, phrase_canvas, monkeypatch):
    """What the adaptor is given on every pass: per image, one phrase per real layout row, the row's
    own (the guided pass and the null pass of classifier-free guidance)."""
    adaptor = phrase_module.sampling_model.adaptor  # the EMA weights sample
    seen, real = [], adaptor.phrase_table

    def spy(layout, box_text):
        seen.append((layout.clone(), [list(t) for t in box_text]))
        return real(layout, box_text)

    monkeypatch.setattr(adaptor, "phrase_table", spy)
    # the blue 7 moved as well, and a cyan 4 (a held-out pair) added: rows and phrases in another order
    new = [PHRASED[1], {"text": "a blue seven", "box": [0.2, 0.05, 0.4, 0.6]}, {"text": "4 in cyan", "box": [0.6, 0.0, 0.3, 0.3]}]
    layoutdiffuse.edit(phrase_canvas, PHRASED, new, ckpt=phrase_module, n=2, guidance=3.0, seed=0)
    assert seen
    expected = ["2 in green", "a blue seven", "4 in cyan"]
    for layout, texts in seen:
        assert len(layout) == 4  # 2 versions, guided + null
        for rows, phrases in zip(layout, texts):
            real_rows = rows[rows[:, 4] >= 0]
            assert phrases in (expected, [])  # the null pass: no boxes, no phrases
            assert len(real_rows) == len(phrases)
            if phrases:
                boxes = [o["box"] for o in new]
                assert torch.allclose(real_rows[:, :4], torch.tensor(boxes))


def test_the_new_phrase_reaches_the_model(phrase_module, phrase_canvas):
    blue = layoutdiffuse.edit(phrase_canvas, PHRASED, BLUE_SEVEN, ckpt=phrase_module, seed=4)
    green = [{"text": "a green seven", "box": PHRASED[0]["box"]}, PHRASED[1]]
    assert not torch.equal(blue, layoutdiffuse.edit(phrase_canvas, PHRASED, green, ckpt=phrase_module, seed=4))
    assert torch.equal(blue, layoutdiffuse.edit(phrase_canvas, PHRASED, BLUE_SEVEN, ckpt=phrase_module, seed=4))


def test_phrase_edits_from_tensors_and_their_errors(phrase_module, phrase_canvas, shipped, canvas):
    from layoutdiffuse.layout_file import parse_phrase_layout

    old, names = parse_phrase_layout(PHRASED)
    new = old.clone()
    new[0, 4] = 2
    by_tensor = layoutdiffuse.edit(phrase_canvas, old, new, ckpt=phrase_module, phrases=[*names, "a blue seven"], seed=4)
    assert torch.equal(by_tensor, layoutdiffuse.edit(phrase_canvas, PHRASED, BLUE_SEVEN, ckpt=phrase_module, seed=4))
    with pytest.raises(UserError, match=r"needs phrases=\["):
        layoutdiffuse.edit(phrase_canvas, old, new, ckpt=phrase_module)
    with pytest.raises(UserError, match="a box's text must be a non-empty phrase"):
        layoutdiffuse.edit(phrase_canvas, PHRASED, [{"text": " ", "box": [0.1, 0.1, 0.2, 0.2]}], ckpt=phrase_module)
    with pytest.raises(UserError, match="give phrases="):
        edit_images(phrase_module, phrase_canvas[None], old[None], new[None])
    image, layout = canvas  # a class model: phrases are refused, naming its classes
    with pytest.raises(UserError, match="object 0 gives a phrase .* reads classes \\(0, 1, 2"):
        layoutdiffuse.edit(image, layout, PHRASED, ckpt=shipped)
    with pytest.raises(UserError, match="phrases= is for models that read a phrase per box"):
        layoutdiffuse.edit(image, layout, layout[:1], ckpt=shipped, phrases=["a red seven"])


def test_cli_edit_rephrases_a_box_of_a_phrase_model(tmp_path, phrase_module, phrase_canvas):
    from layoutdiffuse.checkpoints import export_weights

    ckpt = export_weights(phrase_module, tmp_path / "color.safetensors", half=False)
    save_image(phrase_canvas, tmp_path / "in.png")
    (tmp_path / "old.json").write_text(json.dumps(PHRASED))
    (tmp_path / "new.json").write_text(json.dumps(BLUE_SEVEN))
    assert cli.main(["edit", "--ckpt", str(ckpt), "--image", str(tmp_path / "in.png"), "--layout", str(tmp_path / "old.json"),
                     "--new-layout", str(tmp_path / "new.json"), "--out", str(tmp_path / "out.png"), "--grid", str(tmp_path / "grid.png")]) == 0
    original, edited = load_image(tmp_path / "in.png", 3), load_image(tmp_path / "out.png", 3)
    region = box_mask(torch.tensor([[[*PHRASED[0]["box"], 0.0]]]), 32, 32)[0].expand_as(edited)
    assert torch.equal(edited[~region], original[~region]) and not torch.equal(edited[region], original[region])
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")
