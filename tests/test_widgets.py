"""The interactive sampling UI (layoutdiffuse.widgets), driven from code: objects, clamping, the
layout tensor, sampling through the button, saving, and errors shown as messages."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("ipywidgets")

from layoutdiffuse.adapt import adapt  # noqa: E402
from layoutdiffuse.layout import LayoutError  # noqa: E402
from layoutdiffuse.experiment import build_module  # noqa: E402
from layoutdiffuse.layout_file import load_layout  # noqa: E402
from layoutdiffuse.nn import UNet  # noqa: E402
from layoutdiffuse.widgets import MIN_SIZE, LayoutSampler, clamp_box  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (tests/conftest.py)

CLASSES = [str(i) for i in range(10)]


def tiny_config():
    config = json.load(open("configs/layout_mnist_foundation.json"))
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
    assert ui.widget.children and bytes(ui.preview.value).startswith(b"\x89PNG")


def test_add_and_remove_objects(ui):
    assert ui.layout().shape == (0, 5)
    assert ui.add_object("7", [0.1, 0.1, 0.4, 0.6]) == 0
    assert ui.add_object(3, [0.5, 0.2, 0.3, 0.3]) == 1
    ui.add_button.click()  # a default object, next class in turn
    assert [r["label"] for r in ui.objects()] == ["7", "3", "2"]
    assert len(ui.objects_box.children) == 3
    before = bytes(ui.preview.value)
    ui.rows[1].remove.click()  # the row's own button removes it
    assert [r["label"] for r in ui.objects()] == ["7", "2"]
    assert bytes(ui.preview.value) != before  # the preview follows
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
    ui.save_layout_button.click()
    ui.save_grid_button.click()
    assert sorted(p.name for p in (tmp_path / "buttons").iterdir()) == ["grid_000.png", "layout_000.json"]
    assert "saved" in ui.last_message
    ui.rows[0].x.value = 0.3  # saving a grid drawn for an older layout says so
    ui.save_grid_button.click()
    assert "layout changed since this grid was sampled" in ui.last_message


@pytest.mark.parametrize("case", ["grid before sampling", "folder is a file", "invalid label", "empty folder"])
def test_invalid_states_show_a_message_not_a_traceback(ui, tmp_path, case):
    ui.add_object("7", [0.1, 0.1, 0.4, 0.6])
    if case == "grid before sampling":
        ui.save_grid_button.click()
        expected = "nothing sampled yet: press Sample first"
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
        ui.save_layout_button.click()
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
