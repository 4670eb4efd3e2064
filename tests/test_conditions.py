"""The condition table: a new kind, registered here and nowhere else, is handled by guidance, dropout,
batching (guidance's and the data loader's) and the boundary check; unknown keys are refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from layoutdiffuse.conditions import (CONDITIONS, ConditionKind, cat_conditions, check_condition, collate, drop_condition,
                                      null_condition)
from layoutdiffuse.diffusion.guidance import classifier_free_guidance, conditioned
from layoutdiffuse.errors import UserError
from layoutdiffuse.layout import PAD


#: a kind registered by a test only (a stand-in for any new kind): per-box styles, one list of strings per image
def _check_box_style(value, batch, classes):
    if not isinstance(value, list) or len(value) != batch or not all(isinstance(texts, list) for texts in value):
        raise UserError(f"cond['box_text'] must be {batch} lists of strings (one per box)")


BOX_STYLE = ConditionKind(
    "box_text",
    null=lambda v: [[""] * len(texts) for texts in v],
    drop=lambda v, drop: [[""] * len(texts) if d else texts for d, texts in zip(drop.tolist(), v)],
    cat=lambda vs: [texts for v in vs for texts in v],
    collate=list,
    check=_check_box_style,
)


@pytest.fixture
def box_text(monkeypatch):
    """The table's own ``box_text`` replaced, for this test, by a kind the test file defines."""
    monkeypatch.setitem(CONDITIONS, "box_text", BOX_STYLE)


class TextLengthToy(nn.Module):
    """``out = x + (characters of box text per image)`` and ``+ 100 * (real boxes)``; records its conditions."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, t, cond):
        self.seen.append(cond)
        chars = torch.tensor([float(sum(len(s) for s in texts)) for texts in cond["box_text"]])
        boxes = (cond["layout"][..., 4] >= 0).sum(1).float()
        return x + (chars + 100 * boxes).view(-1, 1, 1, 1)


def test_a_registered_kind_goes_through_guidance_dropout_and_batching(box_text):
    layout = torch.tensor([[[0.1, 0.1, 0.3, 0.3, 2.0], [0.5, 0.5, 0.2, 0.2, 1.0]],
                           [[0.2, 0.2, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, PAD]]])
    cond = {"layout": layout, "box_text": [["a red 2", "a 1"], ["a tall 0"]]}
    null = null_condition(cond)
    assert null["box_text"] == [["", ""], [""]] and null["layout"].shape == (2, 0, 5)

    model = TextLengthToy()
    x, t = torch.zeros(2, 1, 2, 2), torch.tensor([3, 7])
    out = classifier_free_guidance(model, cond, null, 3.0)(x, t)
    both = model.seen[-1]
    assert both["box_text"] == cond["box_text"] + null["box_text"]  # one batched forward for both branches
    cond_value = torch.tensor([10.0 + 200, 8.0 + 100])  # characters + 100 * boxes
    torch.testing.assert_close(out[:, 0, 0, 0], 0 + 3.0 * cond_value)  # null branch: 0
    torch.testing.assert_close(conditioned(model, cond)(x, t)[:, 0, 0, 0], cond_value)

    dropped = drop_condition(cond, 1.0)
    assert dropped["box_text"] == [["", ""], [""]] and (dropped["layout"][..., 4] == PAD).all()
    assert drop_condition(cond, 0.0)["box_text"] == cond["box_text"]
    mixed = drop_condition({"box_text": [["x"]] * 2000, "caption": ["y"] * 2000}, 0.5, torch.Generator().manual_seed(0))
    assert [texts == [""] for texts in mixed["box_text"]] == [c == "" for c in mixed["caption"]]  # dropped together
    assert 900 < sum(texts == [""] for texts in mixed["box_text"]) < 1100

    assert cat_conditions([cond, cond])["box_text"] == cond["box_text"] * 2
    samples = [{"image": torch.zeros(1, 2, 2), "layout": layout[i, : 2 - i], "box_text": cond["box_text"][i]} for i in range(2)]
    batch = collate(samples)
    assert batch["box_text"] == cond["box_text"] and torch.equal(batch["layout"], layout) and batch["image"].shape == (2, 1, 2, 2)
    from layoutdiffuse.training.ddpm import DDPMTraining

    inputs = DDPMTraining.process_batch(None, batch)  # a training step's view of the batch (self is not used there)
    assert set(inputs["cond"]) == {"layout", "box_text"} and inputs["x0"] is batch["image"]

    with pytest.raises(UserError, match=r"cond\['box_text'\] must be 2 lists"):
        check_condition({"layout": layout, "box_text": [["a"]]})
    with pytest.raises(UserError, match=r"cond\['box_text'\] must be 2 lists"):
        conditioned(model, {"layout": layout, "box_text": "a red 2"})


def test_an_unknown_condition_is_refused_not_passed_on():
    cond = {"layout": torch.zeros(2, 0, 5), "style": torch.ones(2, 3)}
    for operation in (null_condition, lambda c: drop_condition(c, 0.5), lambda c: cat_conditions([c, c]), check_condition):
        with pytest.raises(UserError, match="unknown condition 'style'; the condition kinds are: layout, mask, caption, label, box_text, context"):
            operation(cond)


def test_batch_sizes_must_agree():
    with pytest.raises(UserError, match="3 captions for a batch of 2"):
        check_condition({"layout": torch.zeros(2, 0, 5), "caption": ["a", "b", "c"]})
    with pytest.raises(UserError, match=r"null condition"):
        classifier_free_guidance(nn.Identity(), {"layout": torch.zeros(2, 0, 5)}, {"caption": ["", ""]}, 2.0)


def test_box_text_kind_nulls_drops_batches_and_checks_phrases():
    layout = torch.tensor([[[0.1, 0.1, 0.3, 0.3, 0.0], [0.5, 0.5, 0.2, 0.2, 0.0]],
                           [[0.2, 0.2, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0, PAD]]])
    cond = {"layout": layout, "box_text": [["a red 2", "blue one"], ["the 0 is cyan"]]}
    null = null_condition(cond)
    assert null["box_text"] == [[], []] and null["layout"].shape == (2, 0, 5)  # no rows, no phrases
    dropped = drop_condition(cond, 1.0)
    assert dropped["box_text"] == [[], []] and (dropped["layout"][..., 4] == PAD).all()
    kept = drop_condition(cond, 0.0)
    assert kept["box_text"] == cond["box_text"] and torch.equal(kept["layout"], layout)
    both = cat_conditions([cond, null])
    assert both["box_text"] == cond["box_text"] + [[], []] and both["layout"].shape == (4, 2, 5)
    samples = [{"image": torch.zeros(3, 2, 2), "layout": layout[i, : 2 - i], "box_text": cond["box_text"][i]} for i in range(2)]
    batch = collate(samples)
    assert batch["box_text"] == cond["box_text"] and torch.equal(batch["layout"], layout)
    for bad, message in ((["a"], "must be a list of 2 lists"), ([["a"], [""]], "image 1, box 0: a box's phrase must be a non-empty"),
                         ([["a"], ["x" * 201]], "at most 200 characters")):
        with pytest.raises(UserError, match=message):
            check_condition({"layout": layout, "box_text": bad})
