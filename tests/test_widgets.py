"""The interactive sampling UI (layoutdiffuse.widgets), driven from code: objects, clamping, the
layout tensor, sampling through the button, saving, and errors shown as messages."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("ipywidgets")

from layoutdiffuse.adapt import adapt  # noqa: E402
from layoutdiffuse.layout import LayoutError  # noqa: E402
from layoutdiffuse.experiment import build_module  # noqa: E402
from layoutdiffuse.layout_file import load_layout  # noqa: E402
from layoutdiffuse.nn import UNet  # noqa: E402
from layoutdiffuse.errors import UserError  # noqa: E402
from layoutdiffuse.widgets import MIN_SIZE, LayoutSampler, clamp_box  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (tests/conftest.py)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

CLASSES = [str(i) for i in range(10)]


def tiny_config():
    config = json.load(open(CONFIGS / "layout_mnist_foundation.json"))
    config["denoising_model"].update(base_channel=8)
    config["diffusion"]["sampling"].update(steps=3, guidance=2.0)
    return config


@pytest.fixture(scope="module")
def module():
    """An untrained, adapted Layout-MNIST model (no data, no training: samples are noise of the right shape)."""
    torch.manual_seed(0)
    config = tiny_config()
    model = adapt(UNet(**config["denoising_model"]), {"num_classes": 10, "levels": [1, 2], "embed_dim": 16, "num_heads": 1, "num_task_prompts": 4})
    module = build_module(config, model)
    module.class_names = CLASSES
    return module


@pytest.fixture()
def ui(module, tmp_path):
    return LayoutSampler(module, folder=tmp_path / "out", n=3)


def test_defaults_come_from_the_model(ui):
    assert ui.sampler.value == "dpm++" and ui.steps.value == 3 and ui.guidance.value == 2.0 and ui.count.value == 3
    assert {"ancestral", "ddim", "plms", "dpm++"} <= set(ui.sampler.options)
    assert ui.widget.children and ui.canvas.width == ui.canvas.height == 256
    assert ui.prompt is None and ui.edit_button.disabled


def test_add_and_remove_objects(ui):
    assert ui.layout().shape == (0, 5)
    assert ui.add_object("7", [0.1, 0.1, 0.4, 0.6]) == 0
    assert ui.add_object(3, [0.5, 0.2, 0.3, 0.3]) == 1
    ui.pen.value = "2"
    ui.add_button.click()  # a default box of the pen's class
    assert [r["label"] for r in ui.objects()] == ["7", "3", "2"]
    assert len(ui.objects_box.children) == 3
    ui.rows[1].remove.click()  # the row's own button removes it
    assert [r["label"] for r in ui.objects()] == ["7", "2"]
    ui.remove_object(-1)
    assert [r["label"] for r in ui.objects()] == ["7"]
    with pytest.raises(IndexError, match="no object 5"):
        ui.remove_object(5)
    with pytest.raises(LayoutError, match="unknown label 'cat'"):
        ui.add_object("cat", [0.1, 0.1, 0.2, 0.2])


def test_max_objects_disables_the_add_button(module):
    ui = LayoutSampler(module, max_objects=2)
    ui.add_button.click()
    ui.add_button.click()
    assert len(ui.rows) == 2 and ui.add_button.disabled
    with pytest.raises(LayoutError, match="at most 2 objects"):
        ui.add_object("1")
    ui.remove_object(0)
    assert not ui.add_button.disabled


def test_boxes_are_clamped_inside_the_canvas(ui):
    assert clamp_box([0.8, -0.2, 0.5, 0.0]) == pytest.approx([0.8, 0.0, 0.2, MIN_SIZE])
    assert clamp_box([1.0, 0.0, 1.0, 1.0]) == pytest.approx([1 - MIN_SIZE, 0.0, MIN_SIZE, 1.0])
    with pytest.raises(LayoutError, match="4 numbers"):
        clamp_box([0.1, 0.2, 0.3])
    ui.add_object("1", [0.8, 0.1, 0.5, 0.2])  # from code: the corner stays, the size shrinks
    row = ui.rows[0]
    assert [row.x.value, row.y.value, row.w.value, row.h.value] == pytest.approx([0.8, 0.1, 0.2, 0.2])
    row.x.value = 0.9  # moving x past the edge: x stays, w gives way
    assert (row.x.value, row.w.value) == pytest.approx((0.9, 0.1))
    row.w.value = 0.6  # growing w past the edge: w stays, x gives way
    assert (row.x.value, row.w.value) == pytest.approx((0.4, 0.6))
    row.h.value = 1.0
    assert (row.y.value, row.h.value) == pytest.approx((0.0, 1.0))
    row.y.value = 0.5
    assert (row.y.value, row.h.value) == pytest.approx((0.5, 0.5))
    layout = ui.layout()
    assert (layout[:, 0] + layout[:, 2] <= 1 + 1e-6).all() and (layout[:, 1] + layout[:, 3] <= 1 + 1e-6).all()


def test_layout_tensor(ui):
    ui.add_object("7", [0.1, 0.1, 0.4, 0.6])
    ui.add_object("0", [0.5, 0.5, 0.25, 0.5])
    expected = torch.tensor([[0.1, 0.1, 0.4, 0.6, 7.0], [0.5, 0.5, 0.25, 0.5, 0.0]])
    assert torch.allclose(ui.layout(), expected)
    ui.rows[1].label.value = "9"  # the dropdown changes the class
    assert ui.layout()[1, 4] == 9


def test_sample_button_shows_a_grid(ui):
    ui.add_object("7", [0.1, 0.1, 0.4, 0.6])
    ui.seed.value, ui.count.value, ui.sampler.value = 1, 3, "ddim"
    ui.sample_button.click()
    assert "failed" not in ui.last_message, ui.last_message
    assert ui.images.shape == (3, 1, 32, 32) and ui.layouts.shape == (3, 1, 5)
    assert bytes(ui.grid_image.value) == ui.grid_png and ui.grid_png.startswith(b"\x89PNG")
    assert not ui.sample_button.disabled and "sampled 3 image(s), ddim, 3 steps" in ui.last_message
    again = ui.sample()  # the method runs what the button runs: same seed, same images
    assert torch.equal(again, ui.images)
    ui.clear()  # the empty layout samples unconditionally
    assert ui.sample().shape == (3, 1, 32, 32) and "unconditional" in ui.last_message


def test_save_writes_a_layout_file_and_the_grid(ui, tmp_path):
    ui.add_object("7", [0.1, 0.1, 0.4, 0.6])
    ui.add_object("2", [0.55, 0.3, 0.4, 0.5])
    layout_only = ui.save()  # before sampling: the layout alone
    assert [p.name for p in layout_only] == ["layout_000.json"]
    ui.sample()
    paths = ui.save()
    assert [p.name for p in paths] == ["layout_001.json", "grid_001.png"]
    assert all(p.parent == tmp_path / "out" for p in paths)
    assert torch.allclose(load_layout(paths[0], CLASSES), ui.layout())
    assert paths[1].read_bytes().startswith(b"\x89PNG")
    ui.folder.value = str(tmp_path / "buttons")
    ui.save_button.click()
    assert sorted(p.name for p in (tmp_path / "buttons").iterdir()) == ["grid_000.png", "layout_000.json"]
    assert "saved" in ui.last_message
    ui.rows[0].x.value = 0.3  # saving a grid drawn for an older layout says so
    ui.save_button.click()
    assert "layout changed since this grid was sampled" in ui.last_message


@pytest.mark.parametrize("case", ["edit before sampling", "folder is a file", "invalid label", "empty folder"])
def test_invalid_states_show_a_message_not_a_traceback(ui, tmp_path, case):
    ui.add_object("7", [0.1, 0.1, 0.4, 0.6])
    if case == "edit before sampling":
        assert ui.edit() is None
        expected = "edit failed: nothing to edit yet: press Sample"
    elif case == "folder is a file":
        (tmp_path / "file").write_text("")
        ui.folder.value = str(tmp_path / "file")
        assert ui.save() == []
        expected = "it is a file, not a folder"
    elif case == "invalid label":
        ui.rows[0].label.value = None  # a dropdown with nothing selected
        expected = "invalid layout: object 0: unknown label None"
        assert expected in ui.last_message
        ui.sample_button.click()
        expected = "sampling failed: object 0: unknown label None"
    else:
        ui.folder.value = "  "
        ui.save_button.click()
        expected = "the folder is empty"
    assert expected in ui.last_message and "Traceback" not in ui.last_message
    assert "#b00020" in ui.message.value  # shown in red
    if case == "invalid label":
        ui.rows[0].label.value = "4"  # fixing the layout clears the error
        assert ui.last_message == "" and ui.layout()[0, 4] == 4


def test_a_failure_inside_sampling_is_a_message(ui, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr("layoutdiffuse.widgets.sample_images", broken)
    ui.sample_button.click()
    assert ui.last_message == "sampling failed: RuntimeError: CUDA out of memory"
    assert not ui.sample_button.disabled and ui.images is None


def test_an_unconditional_model_samples_without_a_layout():
    torch.manual_seed(0)
    config = tiny_config()
    module = build_module(config, UNet(**config["denoising_model"]))
    ui = LayoutSampler(module, n=2)
    assert ui.add_button.disabled and ui.guidance.disabled and "takes no layout" in ui.last_message
    with pytest.raises(LayoutError, match="takes no layout"):
        ui.add_object("1")
    assert ui.sample().shape == (2, 1, 32, 32) and ui.layouts is None


# --- drawing with the mouse (canvas pixels; the canvas is CANVAS_PX square) ----------------------
from layoutdiffuse.box_drag import start_drag  # noqa: E402
from layoutdiffuse.widgets import CANVAS_PX, MIN_DRAG_PX  # noqa: E402

PX = 1 / CANVAS_PX


def test_box_drag_geometry():
    boxes = [[0.1, 0.1, 0.4, 0.4], [0.3, 0.3, 0.4, 0.4]]
    d = start_drag(boxes, 0.9, 0.9, 0.02)
    assert d.kind == "draw" and d.box(0.6, 1.3) == pytest.approx([0.6, 0.9, 0.3, 0.1])  # any direction, clamped
    d = start_drag(boxes, 0.4, 0.4, 0.02)  # inside both: the top one (drawn last) moves
    assert (d.kind, d.index) == ("move", 1)
    assert d.box(0.5, 0.45) == pytest.approx([0.4, 0.35, 0.4, 0.4])
    assert d.box(5.0, -5.0) == pytest.approx([0.6, 0.0, 0.4, 0.4])  # stops at the edges, keeps its size
    assert start_drag(boxes, 0.4, 0.4, 0.02, selected=0).index == 0  # the selected box first
    d = start_drag(boxes, 0.705, 0.695, 0.02)  # near box 1's bottom-right corner: resize, top-left stays
    assert (d.kind, d.index, d.anchor) == ("resize", 1, pytest.approx((0.3, 0.3)))
    assert d.box(0.2, 0.9) == pytest.approx([0.2, 0.3, 0.1, 0.6])  # dragged past the anchor: flips


def test_drag_adds_moves_resizes_and_the_sliders_follow(ui):
    ui.pen.value = "4"
    ui.drag((32, 64), (160, 224))
    assert ui.objects() == [{"label": "4", "box": pytest.approx([32 * PX, 64 * PX, 128 * PX, 160 * PX])}]
    row = ui.rows[0]
    assert ui.selected == 0 and not ui.delete_button.disabled
    ui.drag((96, 128), (136, 108))  # move by (+40, -20) px
    assert [row.x.value, row.y.value, row.w.value, row.h.value] == pytest.approx([72 * PX, 44 * PX, 128 * PX, 160 * PX])
    ui.drag((200, 204), (250, 250))  # the bottom-right corner
    assert [row.w.value, row.h.value] == pytest.approx([178 * PX, 206 * PX])
    ui.drag((100, 100), (400, 400))  # a move off the canvas stops at the edge
    assert [row.x.value + row.w.value, row.y.value + row.h.value] == pytest.approx([1.0, 1.0])
    row.x.value = 0.1  # the slider moves the box the mouse drags next
    ui.drag((0.1 * CANVAS_PX + 5, 150), (0.1 * CANVAS_PX + 15, 150))
    assert row.x.value == pytest.approx(0.1 + 10 * PX)
    assert torch.allclose(ui.layout(), torch.tensor([[row.x.value, row.y.value, row.w.value, row.h.value, 4.0]]))


def test_drawn_box_off_the_canvas_is_clamped_and_a_tiny_drag_adds_nothing(ui):
    ui.drag((200, 10), (300, -50))
    assert ui.objects()[0]["box"] == pytest.approx([200 * PX, 0.0, 56 * PX, 10 * PX])
    ui.drag((10, 200), (10 + MIN_DRAG_PX - 1, 240))
    assert len(ui.rows) == 1 and "nothing added" in ui.last_message and ui.selected is None
    ui.press(100, 150)  # a click on an empty spot deselects, adds nothing, says nothing
    ui.release(100, 150)
    assert len(ui.rows) == 1 and ui.selected is None and ui.delete_button.disabled
    ui.move_to(30, 30)  # moving without a button pressed does nothing
    assert len(ui.rows) == 1


def test_select_relabel_and_delete(ui):
    ui.drag((10, 10), (100, 100))  # a drawn box is selected: picking a class re-labels it
    ui.pen.value = "8"
    ui.press(200, 20)  # a click on an empty spot deselects; the next box gets the pen's class
    ui.release(200, 20)
    ui.pen.value = "2"
    ui.drag((150, 150), (250, 250))
    assert [r["label"] for r in ui.objects()] == ["8", "2"] and ui.selected == 1
    ui.press(50, 50)  # select the first box: the pen shows its class
    ui.release(50, 50)
    assert ui.selected == 0 and ui.pen.value == "8"
    ui.pen.value = "3"  # the pen re-labels the selected box
    assert [r["label"] for r in ui.objects()] == ["3", "2"] and ui.rows[0].label.value == "3"
    ui.delete_button.click()
    assert [r["label"] for r in ui.objects()] == ["2"] and ui.selected is None and ui.delete_button.disabled
    with pytest.raises(UserError, match="no box selected"):
        ui.delete_selected()
    ui.drag((10, 10), (60, 60))
    ui.drag((200, 200), (210, 210))  # selected box 1, then moved box 0 (selected now)
    ui.remove_object(1)  # removing another box keeps the selection on the same box
    assert ui.selected == 0


def test_delete_without_selection_is_a_message(ui):
    ui.delete_button.disabled = False
    ui.delete_button.click()
    assert "no box selected" in ui.last_message and "#b00020" in ui.message.value


def test_drawing_past_max_objects_is_a_message(module):
    ui = LayoutSampler(module, max_objects=1)
    ui.drag((10, 10), (100, 100))
    ui.canvas._handle_frontend_event(None, {"event": "mouse_down", "x": 150, "y": 150}, [])  # as the browser sends it
    ui.canvas._handle_frontend_event(None, {"event": "mouse_up", "x": 250, "y": 250}, [])
    assert len(ui.rows) == 1 and ui.last_message == "drawing failed: at most 1 objects (max_objects); remove one first"


def test_edit_starts_from_the_current_sample(ui):
    ui.drag((20, 20), (120, 180))
    ui.seed.value, ui.count.value, ui.sampler.value = 1, 2, "ddim"
    first = ui.sample()
    assert not ui.edit_button.disabled
    ui.pick.value = 1
    ui.drag((70, 100), (170, 100))  # move the box right by 100 px
    ui.edit_button.click()
    assert "edited sample 1: 2 version(s)" in ui.last_message and "kept exactly" in ui.last_message, ui.last_message
    from layoutdiffuse.editing import edit_region

    sampled = torch.tensor([[[20 / 256, 20 / 256, 100 / 256, 160 / 256, 0.0]]])
    keep = ~edit_region(sampled, ui.layout()[None], 32, 32)[0, 0]
    assert 0 < keep.sum() < 32 * 32 and ui.images.shape == (2, 1, 32, 32)
    assert torch.equal(ui.images[:, :, keep], first[1:2].expand(2, -1, -1, -1)[:, :, keep])  # sample 1 kept outside the boxes
    assert torch.allclose(ui.layouts[0], ui.layout()) and ui.grid_png.startswith(b"\x89PNG")
    ui.edit()  # the layout has not changed since the last edit: says so
    assert "nothing to edit" in ui.last_message and "#b00020" in ui.message.value


def test_text_models_get_prompt_boxes(module, monkeypatch):
    seen = {}

    def fake_sample(layout, **kwargs):
        seen.update(kwargs)
        return torch.zeros(kwargs["n"], 1, 32, 32), None

    monkeypatch.setattr("layoutdiffuse.widgets.sample_images", fake_sample)
    monkeypatch.setattr(type(module), "is_text_model", True)  # the declared property, as a text foundation says
    ui = LayoutSampler(module, n=1)
    ui.prompt.value, ui.negative_prompt.value = "a red car", "blurry"
    ui.sample()
    assert seen["prompt"] == "a red car" and seen["negative_prompt"] == "blurry"
    monkeypatch.undo()
    plain = LayoutSampler(module)
    assert plain.prompt is None and any("boxes only" in getattr(w, "value", "") for w in plain.widget.children[0].children[0].children)


def test_sample_rejects_a_prompt_for_a_model_without_text(module):
    from layoutdiffuse.sampling import sample

    with pytest.raises(UserError, match="text encoder"):
        sample([], n=1, ckpt=module, prompt="a cat")


def test_the_sample_leaves_the_canvas_when_the_layout_changes(ui):
    """After Sample the canvas shows sample `edit #` under the boxes; any change of the layout clears
    it (issue 27: deleted boxes left the old sample under newly drawn ones); the grid keeps it."""
    ui.drag((20, 20), (120, 180))
    ui.count.value, ui.sampler.value = 2, "ddim"
    ui.sample()
    assert ui._background is not None and not ui.stale
    ui.press(60, 60)  # a click selects: not a change of the layout
    ui.release(60, 60)
    assert ui._background is not None
    ui.delete_selected()
    assert ui._background is None and ui.stale and ui.grid_png is not None
    ui.drag((100, 100), (200, 200))
    ui.pick.value = 1  # picking another sample does not bring an old picture back
    assert ui._background is None
    ui.sample()
    assert ui._background is not None and not ui.stale


def test_the_view_follows_the_draft_and_the_draft_follows_the_view(ui):
    ui.draft.add("5", [0.2, 0.3, 0.4, 0.5])
    row = ui.rows[0]
    assert [s.value for s in row.sliders()] == pytest.approx([0.2, 0.3, 0.4, 0.5]) and row.label.value == "5"
    ui.draft.set_box(0, [0.1, 0.1, 0.2, 0.2])
    ui.draft.set_label(0, "6")
    assert [s.value for s in row.sliders()] == pytest.approx([0.1, 0.1, 0.2, 0.2]) and row.label.value == "6"
    row.h.value = 0.95  # the slider tells the draft; its partner gives way there and here
    assert ui.draft.objects[0].box == pytest.approx([0.1, 0.05, 0.2, 0.95]) and row.y.value == pytest.approx(0.05)


@pytest.mark.parametrize("given", [{}, {"device": "cpu"}, {"dtype": torch.float32}, {"device": "cpu", "dtype": torch.float32}])
def test_device_and_dtype_are_passed_to_sampling_only_when_given(module, monkeypatch, given):
    seen = {}

    def fake_sample(layout, **kwargs):
        seen.update(kwargs)
        return torch.zeros(kwargs["n"], 1, 32, 32), None

    monkeypatch.setattr("layoutdiffuse.widgets.sample_images", fake_sample)
    ui = LayoutSampler(module, n=1, **given)
    ui.sample()
    assert {k: seen[k] for k in ("device", "dtype") if k in seen} == given


def test_the_canvas_is_drawn_only_once_the_page_has_it(ui, monkeypatch):
    """Drawing commands sent before the page created the canvas broke ipycanvas's page-wide queue
    (a blank canvas after "run all", issue 27): nothing is sent until client_ready, and each batch
    then names its canvas."""
    from ipycanvas.canvas import COMMANDS

    sent = []
    monkeypatch.setattr(ui.canvas._canvas_manager, "_send_custom", lambda command, buffers=[]: sent.append(command))
    ui.add_object("7", [0.1, 0.1, 0.4, 0.6])
    ui.drag((150, 150), (200, 220))
    assert sent == [] and len(ui.rows) == 2
    ui.canvas._handle_frontend_event(None, {"event": "client_ready"}, [])  # as the page sends it
    ui.drag((10, 200), (60, 250))
    assert len(sent) >= 2 and all(batch[0][0] == COMMANDS["switchCanvas"] for batch in sent)


# --- a model that reads a phrase per box: a text field instead of the class dropdown -----------------

@pytest.fixture(scope="module")
def phrase_module():
    from layoutdiffuse.notebook_helpers import random_color_model

    return random_color_model(steps=2)


@pytest.fixture()
def phrase_ui(phrase_module, tmp_path):
    return LayoutSampler(phrase_module, folder=tmp_path / "out", n=2)


def test_a_phrase_model_gets_text_fields_and_the_draft_holds_phrases(phrase_ui):
    import ipywidgets as W

    ui = phrase_ui
    assert isinstance(ui.pen, W.Text) and ui.pen.description == "text" and ui.draft.text
    import html

    hint = html.unescape(" ".join(getattr(w, "value", "") for w in ui.widget.children[0].children[0].children))
    assert "type a box's phrase in text" in hint and "magenta" in hint  # the encoder's words
    with pytest.raises(LayoutError, match="a new box needs its phrase"):  # no phrase typed yet: nothing drawn
        ui.drag((20, 20), (120, 180))
    ui.canvas._handle_frontend_event(None, {"event": "mouse_down", "x": 20, "y": 20}, [])  # the mouse: one line says why
    ui.canvas._handle_frontend_event(None, {"event": "mouse_up", "x": 120, "y": 180}, [])
    assert ui.rows == [] and ui.last_message.startswith("drawing failed: a new box needs its phrase: type it in the text field")
    ui.pen.value = "a red seven"  # as typed in the browser (sent on Enter / leaving the field)
    ui.drag((20, 20), (120, 180))
    assert isinstance(ui.rows[0].label, W.Text) and ui.rows[0].label.value == "a red seven"
    ui.pen.value = "2 in blue"  # the new box is selected: typing re-phrases it
    assert ui.objects() == [{"text": "2 in blue", "box": pytest.approx([20 / 256, 20 / 256, 100 / 256, 160 / 256])}]
    ui.press(200, 240)  # click an empty spot: deselect, then a second box with the field's phrase
    ui.release(200, 240)
    ui.pen.value = "the 4 is cyan"
    ui.drag((150, 30), (240, 120))
    ui.rows[0].label.value = "a green  seven"  # a row's own field re-phrases its box
    assert ui.pen.value == "the 4 is cyan"  # the field shows the selected box's phrase (the second box), not the first's
    ui.rows[1].label.value = "the 4 is  cyan"
    assert ui.pen.value == "the 4 is  cyan"
    ui.rows[1].label.value = "the 4 is cyan"
    rows, names = ui.draft.layout_and_names()
    assert names == ["a green seven", "the 4 is cyan"] and rows[:, 4].tolist() == [0.0, 1.0]
    ui.press(30, 30)  # selecting a box shows its phrase in the field
    ui.release(30, 30)
    assert ui.selected == 0 and ui.pen.value == "a green  seven"
    ui.add_button.click()  # a default box with the field's phrase
    assert ui.objects()[-1]["text"] == "a green seven" and len(ui.rows) == 3


def test_a_phrase_model_samples_saves_and_edits_with_its_phrases(phrase_ui, monkeypatch):
    from layoutdiffuse.editing import edit_region
    from layoutdiffuse.layout_file import load_phrase_layout
    from layoutdiffuse import sampling, editing

    ui = phrase_ui
    ui.add_object("a red seven", [0.1, 0.1, 0.4, 0.6])
    ui.add_object("2 in blue", [0.55, 0.35, 0.4, 0.55])
    calls = []
    real_sample, real_edit = sampling.sample, editing.edit_images
    monkeypatch.setattr("layoutdiffuse.widgets.sample_images", lambda *a, **k: calls.append(("sample", a, k)) or real_sample(*a, **k))
    monkeypatch.setattr("layoutdiffuse.widgets.edit_images", lambda *a, **k: calls.append(("edit", a, k)) or real_edit(*a, **k))
    first = ui.sample()
    assert first.shape == (2, 3, 32, 32) and "sampled 2 image(s)" in ui.last_message, ui.last_message
    assert calls[0][2]["phrases"] == ["a red seven", "2 in blue"] and ui.names == ["a red seven", "2 in blue"]
    paths = ui.save()
    assert json.loads(paths[0].read_text()) == [{"text": "a red seven", "box": [0.1, 0.1, 0.4, 0.6]},
                                                {"text": "2 in blue", "box": [0.55, 0.35, 0.4, 0.55]}]
    rows, names = load_phrase_layout(paths[0])
    assert names == ui.names and torch.allclose(rows, ui.layouts[0]) and paths[1].suffix == ".png"
    ui.rows[0].label.value = "a blue seven"  # "make the 7 blue": same box, new phrase
    edited = ui.edit()
    assert edited is not None and "edited sample 0: 2 version(s)" in ui.last_message, ui.last_message
    kind, args, kwargs = calls[-1]
    assert kind == "edit" and kwargs["phrases"] == ["a red seven", "2 in blue", "a blue seven"]
    old, new = args[2][0], args[3][0]
    assert old[:, 4].tolist() == [0.0, 1.0] and new[:, 4].tolist() == [2.0, 1.0]
    region = edit_region(old[None], new[None], 32, 32)[0, 0]
    assert torch.equal(region, edit_region(old[None, :1], old[None, :0], 32, 32)[0, 0])  # the 7's box only
    assert torch.equal(edited[:, :, ~region], first[:1].expand(2, -1, -1, -1)[:, :, ~region])
    assert ui.names == ["a red seven", "2 in blue", "a blue seven"] and ui.layouts[0, :, 4].tolist() == [2.0, 1.0]
    ui.edit()  # chained: the current samples are the edits, and nothing changed since
    assert "nothing to edit" in ui.last_message and "re-phrase" in ui.last_message


def test_an_empty_phrase_in_a_field_is_a_message_until_it_is_typed(phrase_ui):
    ui = phrase_ui
    ui.add_object("a red seven", [0.1, 0.1, 0.4, 0.6])
    ui.rows[0].label.value = "  "
    assert "invalid layout: object 0: a box's text must be a non-empty phrase" in ui.last_message and "#b00020" in ui.message.value
    assert ui.sample() is None and "sampling failed" in ui.last_message
    ui.rows[0].label.value = "red 7"
    assert ui.last_message == "" and ui.objects()[0]["text"] == "red 7"
