# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Interactive sampling: draw a layout, sample, edit, save
#
# A small ipywidgets UI around a LayoutDiffuse model (`layoutdiffuse.widgets.LayoutSampler`):
# **draw boxes with the mouse** on the canvas (drag on an empty spot to add a box, drag a box to
# move it, drag a corner to resize it, click a box to select it; `class` then re-labels it and
# **Delete box** removes it), or type them exactly with the x / y / w / h sliders (both stay in
# sync); choose the sampler, steps, guidance scale, seed and count, press **Sample**. Then move,
# resize, re-label, add or remove boxes and press **Edit**: sample `edit #` is re-generated for the
# new layout, only inside the boxes that changed (see notebook 05 and `docs/editing.md`). **Save**
# writes the layout (a layout file, see `layoutdiffuse.layout_file`) and the grid (PNG) into the
# folder of the text box.
#
# Open it in JupyterLab with `make lab` (the widget extensions, ipywidgets and ipycanvas, come
# prebuilt with their packages). `tests/test_browser.py` runs this notebook in headless Chromium,
# draws a box with the mouse, samples, saves and edits.
#
# The model is the shipped Layout-MNIST model (`layoutdiffuse/weights/layout_mnist.safetensors`).
# When that file is missing, the notebook trains a *tiny stand-in* for a few steps instead (seconds
# on a CPU) and says so: it shows how the UI works, but its samples are noise.
#
# **Quick mode.** `LAYOUTDIFFUSE_QUICK=1` (what CI's nbval sets) samples with 5 steps and trains the
# stand-in for 3 steps, so the notebook runs in about a minute on a CPU.

# %%
import json
import os
import tempfile
from pathlib import Path

import torch
from IPython.display import Image, display

from layoutdiffuse.data.paths import data_root
from layoutdiffuse.experiment import train
from layoutdiffuse.layout_file import load_layout
from layoutdiffuse.sampling import SHIPPED_MODEL, load_model
from layoutdiffuse.widgets import LayoutSampler

QUICK = os.environ.get("LAYOUTDIFFUSE_QUICK") == "1"
CONFIGS = Path("../configs" if Path("../configs").exists() else "configs")
if QUICK:
    torch.set_num_threads(1)


def tiny_stand_in(workdir, steps):
    """Pretrain a tiny foundation and adapt it, ``steps`` steps each (as in tests/test_layout_pipeline.py)."""
    def config(name):
        c = json.loads((CONFIGS / f"{name}.json").read_text())
        c["expt_dir"] = str(workdir)
        c["data"].update(root=str(data_root()), length=64, batch_size=8, num_workers=0)
        c["trainer_args"] = {"max_steps": steps, "accelerator": "cpu", "limit_val_batches": 0, "enable_progress_bar": not QUICK, "logger": False}
        c["diffusion"]["lr_scheduler"].update(warmup_steps=1, total_steps=steps)
        c["callbacks"] = {}
        if "denoising_model" in c:
            c["denoising_model"].update(base_channel=8)
        return c

    train(config("layout_mnist_foundation"))
    adapted = config("layout_mnist")
    adapted["adapt"]["foundation_ckpt"] = str(Path(workdir) / "layout_mnist_foundation" / "checkpoints" / "last.ckpt")
    return train(adapted).cpu().eval()


try:
    module = load_model()
    print(f"loaded the shipped model {SHIPPED_MODEL.name}")
except FileNotFoundError:
    steps = 3 if QUICK else 20
    print(f"The shipped model {SHIPPED_MODEL} is missing.\n"
          f"Training a TINY stand-in instead ({steps} steps of pretraining + {steps} of adaptation, in a temporary folder):\n"
          "the UI works the same, but its samples will look like noise. Train the real model with\n"
          "  python -m layoutdiffuse train -c configs/layout_mnist_foundation.json\n"
          "  python -m layoutdiffuse train -c configs/layout_mnist.json")
    module = tiny_stand_in(tempfile.mkdtemp(prefix="layoutdiffuse_04_"), steps)
print("classes:", module.class_names, "| default sampling:", module.sampling_args)

# %% [markdown]
# ## The UI
# Boxes are `[x, y, w, h]`: the top-left corner and the size as fractions of the canvas. A box
# never leaves the canvas: a drag past the edge is clamped, a drag of a few pixels adds nothing,
# and when `x + w` would pass 1 on the sliders, the slider you move keeps its value and its
# partner gives way (the same for `y` and `h`). No objects at all is the empty layout, which draws
# unconditional samples. Once sampled, the canvas shows sample `edit #` under the boxes until the
# layout changes (the grid below keeps the samples). Errors
# (for example Edit before Sample, or a folder that is a file) appear as a red line under the
# buttons, never as a traceback.

# %%
ui = LayoutSampler(module, n=4 if QUICK else 8)
if QUICK:
    ui.steps.value = 5
    ui.folder.value = tempfile.mkdtemp(prefix="layoutdiffuse_04_out_")  # CI leaves nothing behind
ui.widget

# %% [markdown]
# ## The same from code
# Every button and mouse gesture runs a method of the UI: `add_object(label, box)`,
# `drag(start, end)` (canvas pixels), `remove_object(i)`, `layout()` (the `(N, 5)` tensor the model
# gets), `sample()`, `edit()` and `save(folder)`. Here we place a two-digit layout and press the
# buttons from code; the widget above updates as if clicked.

# %%
ui.clear()
ui.add_object("7", [0.1, 0.1, 0.4, 0.6])
ui.add_object("2", [0.55, 0.35, 0.4, 0.55])
print("layout (x, y, w, h, class):\n", ui.layout())

ui.sample_button.click()
print(ui.last_message)
assert ui.images is not None and ui.images.shape == (ui.count.value, *module.image_shape), ui.last_message
display(Image(ui.grid_png))

# %% [markdown]
# Save the layout and the grid (the Save buttons do the same, into the folder of the text box).
# The layout file reads back with `layoutdiffuse.layout_file.load_layout`, and can be sampled again
# with `python -m layoutdiffuse sample --layout FILE`.

# %%
paths = ui.save()
print(ui.last_message)
assert [p.suffix for p in paths] == [".json", ".png"] and all(p.exists() for p in paths), ui.last_message
assert torch.allclose(load_layout(paths[0], ui.class_names), ui.layout())
print(paths[0].read_text())
