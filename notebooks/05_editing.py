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
# # 05 · Editing an image by its layout
#
# Given an image and its layout, change the layout -- move, resize, re-label, remove or add an
# object -- and `layoutdiffuse.edit(image, layout, new_layout)` re-generates only what changed.
# The **edit region** is the union of the boxes of the changed objects (a moved object: its old
# box and its new one); outside it every pixel stays the original's, exactly. Inside it the model
# samples the new layout *given* the kept pixels: at each sampling step the kept region is replaced
# by the original, forward-noised to that step (masked sampling, as in RePaint; `resample=r` adds
# RePaint's resampling passes). See `docs/editing.md`.
#
# Below: an edit of a sample of the shipped model, an edit of a real Layout-MNIST canvas, and a
# measurement on a batch of real canvases -- layout accuracy of the edited objects (read by the
# project's crop judge) and the change outside the edit region.
#
# **Quick mode.** `LAYOUTDIFFUSE_QUICK=1` (what CI's nbval sets) samples with 5 steps and measures
# 8 edits per kind instead of 64, so the notebook runs in well under a minute on a CPU.

# %%
import os

import matplotlib.pyplot as plt
import torch

import layoutdiffuse
from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.editing import box_mask, edit_images, edit_region
from layoutdiffuse.evaluation.crop_classifier import CROP, load_crop_classifier
from layoutdiffuse.evaluation.layout_accuracy import layout_accuracy
from layoutdiffuse.layout import PAD, pad_layouts
from layoutdiffuse.sampling import as_layout, load_model
from layoutdiffuse.visualize import draw_layouts

QUICK = os.environ.get("LAYOUTDIFFUSE_QUICK") == "1"
STEPS = 5 if QUICK else 25
if QUICK:
    torch.set_num_threads(1)
module = load_model()  # the shipped Layout-MNIST model
names = module.class_names


def show(images, layouts, titles):
    """Images (B, C, H, W) with their layouts (B, N, 5) drawn, side by side."""
    fig, axes = plt.subplots(1, len(images), figsize=(2.6 * len(images), 2.8))
    for ax, tile, title in zip(axes, draw_layouts(images, layouts, names, scale=4), titles):
        ax.imshow(tile.permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    plt.show()


def shifted(rows):
    """Move each first box 0.3 of the canvas right, or left where it would leave the canvas (always a change)."""
    x, w = rows[:, 0, 0], rows[:, 0, 2]
    out = rows.clone()
    out[:, 0, 0] = torch.where(x + w + 0.3 <= 1, x + 0.3, (x - 0.3).clamp(min=0))
    return out


# %% [markdown]
# ## Editing a sample
# Sample a "7" and a "2", then move the 2 to the top right and re-label the 7 as a 1 -- one call each.

# %%
layout = [{"label": "7", "box": [0.1, 0.1, 0.4, 0.6]}, {"label": "2", "box": [0.55, 0.35, 0.4, 0.55]}]
moved = [layout[0], {"label": "2", "box": [0.55, 0.02, 0.4, 0.55]}]
relabelled = [{"label": "1", "box": [0.1, 0.1, 0.4, 0.6]}, layout[1]]
images, _ = layoutdiffuse.sample(layout, n=1, ckpt=module, steps=STEPS, seed=3)
image = images[0]
after_move = layoutdiffuse.edit(image, layout, moved, ckpt=module, steps=STEPS, seed=0)[0]
after_relabel = layoutdiffuse.edit(image, layout, relabelled, ckpt=module, steps=STEPS, seed=0)[0]

rows = pad_layouts([as_layout(x, names) for x in (layout, moved, relabelled)])
show(torch.stack([image, after_move, after_relabel]), rows, ["sample", "the 2 moved", "the 7 re-labelled 1"])
for title, new, edited in (("move", rows[1], after_move), ("re-label", rows[2], after_relabel)):
    region = edit_region(rows[:1], new[None], 32, 32)[0]
    change_out = (edited - image)[~region.expand_as(image)].abs().max().item()
    print(f"{title}: re-generated {region.float().mean():.0%} of the canvas; largest change outside it: {change_out}")

# %% [markdown]
# ## Editing a real canvas
# A Layout-MNIST validation canvas (real MNIST-test digits): move its first digit and make it the
# next class. The kept pixels, the other digit included, are the real ones. (The first canvas with two digits where the moved
# box lands clear of the other: an edit into another object's box re-draws that object's
# pixels inside the overlap too.)

# %%
val = DATASETS.get("layout_mnist")(split="val", image_size=32, length=2 * 64 + 8)


def clear_of_others(old, new):
    """The first box, at its old place ``old (N, 5)`` and its new one ``new``, touches none of the other boxes."""
    moved = box_mask(old[None, :1], 32, 32) | box_mask(new[None, :1], 32, 32)
    return not (moved & box_mask(old[None, 1:], 32, 32)).any()


for index in range(len(val)):
    item = val[index]
    if len(item["layout"]) == 2 and clear_of_others(item["layout"], shifted(item["layout"][None])[0]):
        break
real, real_layout = item["image"], item["layout"]
new_layout = shifted(real_layout[None])[0]
new_layout[0, 4] = (new_layout[0, 4] + 1) % 10
print(f"canvas {index}:", [names[int(c)] for c in real_layout[:, 4]], "->", [names[int(c)] for c in new_layout[:, 4]])
edited = layoutdiffuse.edit(real, real_layout, new_layout, ckpt=module, n=3, steps=STEPS, seed=0)
show(torch.cat([real[None], edited]), torch.cat([real_layout[None], new_layout[None].expand(3, -1, -1)]),
     ["real canvas", "edit, seed 0", "version 2", "version 3"])

# %% [markdown]
# ## Measured on real canvases
# `n` validation canvases per kind; the first object of each is moved (0.3 of the canvas sideways) or
# re-labelled (to the next class). The crop judge reads the edited object's box; the same judge
# on the real canvases' objects is the ceiling of this measure. `benchmarks/bench_editing.py` runs
# the same measure on more canvases and all four kinds.

# %%
n = 8 if QUICK else 64
batch = val.collate([val[i] for i in range(n)])
images, layouts = batch["image"], batch["layout"]
judge = load_crop_classifier()


def first_only(rows):
    out = rows.clone()
    out[:, 1:, 4] = PAD
    return out


results = {}
for kind in ("move", "re-label"):
    new = shifted(layouts) if kind == "move" else layouts.clone()
    if kind == "re-label":
        new[:, 0, 4] = (new[:, 0, 4] + 1) % 10
    edited, region = edit_images(module, images, layouts, new, steps=STEPS, generator=torch.Generator().manual_seed(0))
    diff = (edited - images).abs()
    results[kind] = {
        "edited-object accuracy": layout_accuracy(edited, first_only(new), judge, **CROP).accuracy,
        "ceiling (real canvases)": layout_accuracy(images, first_only(layouts), judge, **CROP).accuracy,
        "mean |change| outside region": diff[~region.expand_as(diff)].mean().item(),
        "mean |change| inside region": diff[region.expand_as(diff)].mean().item(),
    }
    assert results[kind]["mean |change| outside region"] == 0.0
for kind, row in results.items():
    print(f"{kind:9s}", "  ".join(f"{k}: {v:.3f}" for k, v in row.items()), f"({n} edits, {STEPS} steps)")
