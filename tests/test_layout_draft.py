"""The layout draft behind the sampling widget, without any widget: objects, selection, gestures,
clamping and the change notifications a view follows."""
from __future__ import annotations

import random

import pytest
import torch

from layoutdiffuse.errors import UserError
from layoutdiffuse.layout import LayoutError
from layoutdiffuse.layout_draft import MIN_SIZE, LayoutDraft, clamp_box

CLASSES = [str(i) for i in range(10)]


@pytest.fixture
def draft():
    d = LayoutDraft(CLASSES, max_objects=4, handle=0.03, min_drag=0.02)
    d.seen = []
    d.observe(d.seen.append)
    return d


def test_objects_and_what_the_listeners_hear(draft):
    assert draft.add("7", [0.1, 0.1, 0.4, 0.6]) == 0 and draft.add(3, [0.5, 0.2, 0.3, 0.3]) == 1
    draft.select(1)
    draft.set_label(0, "9")
    draft.set_box(1, [0.6, 0.2, 0.3, 0.3])
    draft.set_box(1, [0.6, 0.2, 0.3, 0.3])  # no change: no notification
    draft.remove(0)
    assert draft.seen == ["objects", "objects", "selection", ("label", 0), ("box", 1), "objects"]
    assert draft.selected == 0 and draft.to_json() == [{"label": "3", "box": [0.6, 0.2, 0.3, 0.3]}]
    assert torch.allclose(draft.layout(), torch.tensor([[0.6, 0.2, 0.3, 0.3, 3.0]]))
    draft.delete_selected()
    assert draft.to_json() == [] and draft.selected is None and draft.layout().shape == (0, 5)
    with pytest.raises(UserError, match="no box selected"):
        draft.delete_selected()


def test_refusals(draft):
    with pytest.raises(LayoutError, match="unknown label 'cat'"):
        draft.add("cat")
    with pytest.raises(IndexError, match="no object 0"):
        draft.remove(0)
    for _ in range(4):
        draft.add("1")
    with pytest.raises(LayoutError, match="at most 4 objects"):
        draft.add("1")
    draft.set_label(0, None)  # what a dropdown with nothing selected gives: refused when the layout is read
    with pytest.raises(LayoutError, match="object 0: unknown label None"):
        draft.layout()
    off = LayoutDraft(CLASSES, enabled=False)
    with pytest.raises(LayoutError, match="takes no layout"):
        off.add("1")
    off.press(0.5, 0.5)
    assert off.release(0.9, 0.9) is None and off.to_json() == [] and off.layout().shape == (0, 5)


def test_a_side_set_past_the_edge_makes_its_partner_give_way(draft):
    draft.add("1", [0.8, 0.1, 0.5, 0.2])  # the corner stays, the size shrinks
    assert draft.objects[0].box == pytest.approx([0.8, 0.1, 0.2, 0.2])
    for side, value, expected in [("x", 0.9, [0.9, 0.1, 0.1, 0.2]), ("w", 0.6, [0.4, 0.1, 0.6, 0.2]),
                                  ("h", 1.0, [0.4, 0.0, 0.6, 1.0]), ("y", 0.5, [0.4, 0.5, 0.6, 0.5]), ("x", 0.1, [0.1, 0.5, 0.6, 0.5])]:
        draft.set_side(0, side, value)
        assert draft.objects[0].box == pytest.approx(expected), (side, value)


def test_gestures_draw_move_resize_and_select(draft):
    draft.press(0.1, 0.2)
    draft.move_to(0.3, 0.3)
    assert draft.preview == pytest.approx([0.1, 0.2, 0.2, 0.1]) and draft.to_json() == []
    assert draft.release(0.5, 0.6, label="4") is None
    assert draft.to_json() == [{"label": "4", "box": pytest.approx([0.1, 0.2, 0.4, 0.4])}] and draft.selected == 0 and draft.preview is None
    draft.press(0.3, 0.4)  # inside: move by (+0.1, -0.1)
    draft.move_to(0.35, 0.35)
    draft.release(0.4, 0.3)
    assert draft.objects[0].box == pytest.approx([0.2, 0.1, 0.4, 0.4])
    draft.press(0.6, 0.5)  # the bottom-right corner: resize, the top-left stays
    draft.release(0.9, 2.0)  # past the edge: clamped
    assert draft.objects[0].box == pytest.approx([0.2, 0.1, 0.7, 0.9])
    draft.press(0.95, 0.05)  # a click on an empty spot deselects, adds nothing, says nothing
    assert draft.release(0.95, 0.05) is None and draft.selected is None and len(draft.objects) == 1
    draft.press(0.0, 0.95)
    assert draft.release(0.01, 0.99) == "too small" and len(draft.objects) == 1
    draft.move_to(0.5, 0.5)  # no button down: nothing
    assert len(draft.objects) == 1 and draft.release(0.5, 0.5) is None
    draft.press(0.9, 0.99)
    draft.release(1.0, 0.995)
    assert draft.release(0.5, 0.5) is None and draft.next_label() == CLASSES[1]


def test_every_box_stays_inside_the_canvas_whatever_the_user_does(draft):
    """Random gestures and slider moves (beyond the canvas too): the invariants a naive check states."""
    rng = random.Random(0)
    for _ in range(2000):
        op = rng.choice(["press", "move", "release", "side", "add", "remove"])
        u, v = rng.uniform(-0.5, 1.5), rng.uniform(-0.5, 1.5)
        if op == "press":
            draft.press(u, v)
        elif op == "move":
            draft.move_to(u, v)
        elif op == "release":
            try:
                draft.release(u, v, label=rng.choice(CLASSES))
            except LayoutError as err:  # a box drawn on a full layout: refused, nothing half-done
                assert "at most 4 objects" in str(err) and len(draft.objects) == 4 and draft.preview is None
        elif op == "side" and draft.objects:
            side = rng.choice("xywh")
            draft.set_side(rng.randrange(len(draft.objects)), side, rng.uniform(0, 1) if side in "xy" else rng.uniform(MIN_SIZE, 1))
        elif op == "add" and len(draft.objects) < draft.max_objects:
            draft.add(rng.choice(CLASSES), [u, v, rng.uniform(-1, 2), rng.uniform(-1, 2)])
        elif op == "remove" and draft.objects:
            draft.remove(rng.randrange(len(draft.objects)))
        for o in draft.objects:
            x, y, w, h = o.box
            assert 0 <= x and 0 <= y and w >= MIN_SIZE - 1e-9 and h >= MIN_SIZE - 1e-9 and x + w <= 1 + 1e-6 and y + h <= 1 + 1e-6, o.box
        assert draft.selected is None or 0 <= draft.selected < len(draft.objects)
    draft.layout()  # always a valid layout


def test_clamp_box():
    assert clamp_box([0.8, -0.2, 0.5, 0.0]) == pytest.approx([0.8, 0.0, 0.2, MIN_SIZE])
    assert clamp_box([1.0, 0.0, 1.0, 1.0]) == pytest.approx([1 - MIN_SIZE, 0.0, MIN_SIZE, 1.0])
    for bad in ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3, float("nan")], [0.1, 0.2, 0.3, True]):
        with pytest.raises(LayoutError):
            clamp_box(bad)


def test_a_text_draft_holds_phrases_and_reads_as_a_phrase_layout():
    from layoutdiffuse.layout_file import parse_phrase_layout

    d = LayoutDraft([], max_objects=4, text=True)
    seen = []
    d.observe(seen.append)
    assert d.add("a  red seven", [0.1, 0.1, 0.4, 0.6]) == 0  # white space normalised, as in a layout file
    assert d.add(3, [0.5, 0.2, 0.3, 0.3]) == 1  # an integer is its text
    d.press(0.02, 0.9)
    d.release(0.3, 0.98, label="2 in blue")
    assert d.selected == 2
    d.set_label(1, "the 7 is red")
    assert d.to_json() == [{"text": "a red seven", "box": [0.1, 0.1, 0.4, 0.6]}, {"text": "the 7 is red", "box": [0.5, 0.2, 0.3, 0.3]},
                           {"text": "2 in blue", "box": pytest.approx([0.02, 0.9, 0.28, 0.08])}]
    rows, names = d.layout_and_names()
    assert names == ["a red seven", "the 7 is red", "2 in blue"] and rows[:, 4].tolist() == [0.0, 1.0, 2.0]
    d.set_label(2, "a red seven")  # a phrase used twice: one name, two rows
    rows, names = d.layout_and_names()
    assert names == ["a red seven", "the 7 is red"] and rows[:, 4].tolist() == [0.0, 1.0, 0.0]
    assert torch.equal(rows, parse_phrase_layout(d.to_json())[0]) and torch.equal(d.layout(), rows)
    assert ("label", 1) in seen and ("label", 2) in seen
    d.press(0.6, 0.6)  # a box drawn with no phrase given
    d.move_to(0.9, 0.95)
    with pytest.raises(LayoutError, match="needs its phrase: type it in the text field"):
        d.release(0.9, 0.95)
    assert len(d.objects) == 3 and d.preview is None  # nothing added, no box left half-drawn
    for bad in ("  ", "", None, "x" * 201):
        with pytest.raises(LayoutError, match="a box's text"):
            d.add(bad, [0.1, 0.1, 0.2, 0.2])
    d.set_label(0, " ")  # a field being retyped: checked when the layout is read
    with pytest.raises(LayoutError, match="object 0: a box's text must be a non-empty phrase"):
        d.layout()


def test_a_class_draft_still_refuses_phrases_and_names_its_classes():
    d = LayoutDraft(CLASSES)
    d.add("7", [0.1, 0.1, 0.2, 0.2])
    assert d.layout_and_names()[1] == CLASSES and d.to_json() == [{"label": "7", "box": [0.1, 0.1, 0.2, 0.2]}]
    with pytest.raises(LayoutError, match="unknown label 'a red seven'; use a class name"):
        d.add("a red seven", [0.1, 0.1, 0.2, 0.2])
