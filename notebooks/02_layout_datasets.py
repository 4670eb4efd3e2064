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
# # 02 · The layout datasets
#
# What a layout-to-image model is trained on: for each benchmark of the paper (COCO-stuff,
# Visual Genome, CelebAMask-HQ) and for the Layout-MNIST toy, a grid of images with their boxes
# and class names, the part masks where there are some, and histograms of the number of objects
# per image and of the box sizes. Every dataset is opened through the `DATASETS` registry, the
# same call a config's `"data": {"dataset": ...}` makes.
#
# **Data.** Everything is read from one root, `$LAYOUTDIFFUSE_DATA` (default `~/data`); see the
# `data_scripts/` to fetch and preprocess it. When a real dataset is not there, its section shows
# the **test fixtures** instead (tiny trees of noise images in the dataset's true on-disk format,
# written by `layoutdiffuse/data/fixtures.py` into a temporary folder) and says so: the pictures
# then show how the loader reads the files, not what the data looks like. Layout-MNIST is built
# from the real MNIST digits under the data root.
#
# **Quick mode.** `LAYOUTDIFFUSE_QUICK=1` (what CI's nbval sets) shows fewer images and computes
# the statistics of the mask datasets on fewer samples; the box statistics of COCO-stuff and
# Visual Genome always cover the whole split (they come from the annotation arrays, no decoding).

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch

from layoutdiffuse.layout import IGNORE
from layoutdiffuse.data import fixtures
from layoutdiffuse.data.paths import data_root
from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.data.transforms import clipped_area_fraction
from layoutdiffuse.notebook_helpers import QUICK, show
from layoutdiffuse.visualize import grid


ROOT = data_root()
FIXTURES = tempfile.TemporaryDirectory(prefix="layoutdiffuse_fixtures_")  # written only for missing datasets
SIZE = 128                              # image side shown
N_SHOW = 8 if QUICK else 16             # images per grid
N_STATS = 64 if QUICK else 2000         # samples decoded for the statistics of CelebAMask-HQ / Layout-MNIST
torch.manual_seed(0)
print("quick mode" if QUICK else "full settings", f"| data root: {ROOT}")


def open_dataset(name, real_split, write_fixture, fixture_split, **kwargs):
    """The real dataset under ROOT if it is there, else the test fixture (and say which)."""
    try:
        ds = DATASETS.get(name)(split=real_split, root=str(ROOT), **kwargs)
        print(f"{name}: real data from {ROOT}, split {real_split!r}: {len(ds)} images, {ds.num_classes} classes")
        return ds, True
    except FileNotFoundError as err:
        print(f"{name}: real data not found under {ROOT}, showing the test fixtures\n  (the loader says: {err})")
    write_fixture(Path(FIXTURES.name))
    ds = DATASETS.get(name)(split=fixture_split, root=FIXTURES.name, **kwargs)
    print(f"{name}: fixture split {fixture_split!r}: {len(ds)} images (noise pictures), {ds.num_classes} classes")
    return ds, False


def pick(ds, n, real):
    """Indices of up to n samples: a fixed random choice on real data, all of a fixture."""
    return torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].tolist() if real else list(range(min(n, len(ds))))


def show_layouts(ds, real, title):
    batch = ds.collate([ds[i] for i in pick(ds, N_SHOW, real)])
    show(grid(batch["image"], layouts=batch["layout"], class_names=ds.class_names, nrow=4), title, size=12)
    return batch


def histograms(counts, areas, title, min_size=None):
    """Objects per image, and box area as a fraction of the image (log scale)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.5))
    counts = np.asarray(counts)
    a.hist(counts, bins=np.arange(counts.min(), counts.max() + 2) - 0.5, rwidth=0.8)
    a.set_xlabel("objects per image")
    a.set_ylabel("images")
    areas = np.asarray(areas, dtype=float)
    b.hist(areas, bins=np.logspace(np.log10(max(areas.min(), 1e-4)), 0, 30))
    b.set_xscale("log")
    b.set_xlabel("box area / image area")
    b.set_ylabel("boxes")
    if min_size is not None:
        b.axvline(min_size, color="k", linestyle="--", label=f"filter: area > {min_size}")
        b.legend()
    fig.suptitle(f"{title}: {len(counts)} images, {len(areas)} boxes, {counts.mean():.1f} objects per image")
    plt.show()


def box_statistics(ds):
    """Per image object counts and per box area fractions of a COCO-stuff / VG loader, from its
    annotation arrays (boxes clipped to the image: the quantity its filter thresholds)."""
    counts = np.diff(ds.offsets)
    image_of_box = np.repeat(np.arange(len(counts)), counts)
    return counts, clipped_area_fraction(ds.boxes, ds.sizes[image_of_box])


def sample_statistics(ds, n):
    """Object counts and box areas (w * h of the layout) of the first n samples."""
    layouts = [ds[i]["layout"] for i in range(min(n, len(ds)))]
    return [len(l) for l in layouts], torch.cat([l[:, 2] * l[:, 3] for l in layouts]).numpy()


def colour_masks(mask, num_classes):
    """(B, H, W) part classes -> (B, 3, H, W) in [-1, 1]; IGNORE (background of Layout-MNIST) is black."""
    lut = torch.zeros(256, 3)
    lut[:num_classes] = torch.tensor(plt.cm.tab20(np.arange(num_classes) % 20)[:, :3], dtype=torch.float32)
    return lut[mask].permute(0, 3, 1, 2) * 2 - 1


def show_masks(batch, ds, title):
    n = len(batch["image"])
    tiles = torch.cat([batch["image"].expand(-1, 3, -1, -1), colour_masks(batch["mask"], ds.num_classes)])
    plt.figure(figsize=(14, 14 * 2 / n + 1))
    plt.imshow(grid(tiles, nrow=n, scale=max(1, 128 // tiles.shape[-1])).permute(1, 2, 0))
    plt.axis("off")
    present = sorted(int(c) for c in batch["mask"].unique() if int(c) != IGNORE)
    handles = [Patch(color=plt.cm.tab20(c % 20), label=ds.class_names[c]) for c in present]
    if (batch["mask"] == IGNORE).any():
        handles.append(Patch(color="black", label="background (ignore)"))
    plt.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    plt.title(title)
    plt.show()


# %% [markdown]
# ## COCO-stuff 2017
# Things and stuff boxes, 171 classes, filtered by the LostGAN / sg2im protocol (docs/method.md §7): stuff
# "other" dropped, boxes must cover more than 2% of the image, 3–8 objects per image, crowd boxes
# dropped. The validation split shown here has 3,097 images under this protocol. Images are
# stretched to a square, so boxes keep their normalised coordinates.

# %%
coco, coco_real = open_dataset("coco_stuff", "val", fixtures.write_coco, "val", image_size=SIZE)
if coco_real:
    print(f"protocol check: {len(coco)} val images (LostGAN-v2 / LayoutDiffusion report 3,097)")
show_layouts(coco, coco_real, "COCO-stuff" + ("" if coco_real else " (test fixture: noise images)"))
histograms(*box_statistics(coco), "COCO-stuff" + ("" if coco_real else " fixture"), min_size=0.02)

# %% [markdown]
# ## Visual Genome
# sg2im's split by image id and its preprocessing (`data_scripts/preprocess_vg.py`: 178 object
# classes on VG 1.4), then boxes covering more than 2% of the image and 3–30 objects per image.

# %%
def write_vg(root):
    fixtures.write_visual_genome(root)
    from layoutdiffuse.data.visual_genome import preprocess_visual_genome
    preprocess_visual_genome(root / "vg", **fixtures.VG_PARAMS)  # thresholds scaled to the tiny fixture


vg, vg_real = open_dataset("visual_genome", "val", write_vg, "train", image_size=SIZE)
show_layouts(vg, vg_real, "Visual Genome" + ("" if vg_real else " (test fixture: noise images)"))
histograms(*box_statistics(vg), "Visual Genome" + ("" if vg_real else " fixture"), min_size=0.02)

# %% [markdown]
# ## CelebAMask-HQ
# Faces with a label map of 19 classes (background 0 and 18 parts), merged from the per-part PNGs
# (`data_scripts/merge_celebamask.py`) and resized nearest. The paper conditions on the mask; the
# loader also derives one box per part present (drawn on the images below).

# %%
def write_celeb(root):
    fixtures.write_celebamask(root)
    from layoutdiffuse.data.celebmask import merge_celebamask
    merge_celebamask(root)


celeb, celeb_real = open_dataset("celebmask", "val", write_celeb, "all", image_size=SIZE)
batch = show_layouts(celeb, celeb_real, "CelebAMask-HQ, part boxes" + ("" if celeb_real else " (test fixture: noise images)"))
show_masks(batch, celeb, "CelebAMask-HQ: images (top) and part masks (bottom)")
histograms(*sample_statistics(celeb, N_STATS), "CelebAMask-HQ part boxes" + ("" if celeb_real else " fixture"))

# %% [markdown]
# ## Layout-MNIST (the toy)
# 1–3 real MNIST digits per canvas in random boxes, with box layouts (class = digit) and part
# masks (digit class where the digit's ink is, background = 255, the "ignore" value that the
# adaptor treats as null). Built on the fly from MNIST under the data root, deterministic per index.

# %%
try:
    mnist = DATASETS.get("layout_mnist")(split="train", root=str(ROOT), image_size=64)
except FileNotFoundError as err:
    mnist = None
    print(f"Layout-MNIST needs MNIST under {ROOT}: {err}")
if mnist is not None:
    print(f"layout_mnist: {len(mnist)} canvases, {mnist.num_classes} classes")
    batch = show_layouts(mnist, False, "Layout-MNIST")
    show_masks(batch, mnist, "Layout-MNIST: canvases (top) and digit masks (bottom)")
    histograms(*sample_statistics(mnist, N_STATS), "Layout-MNIST")

# %%
FIXTURES.cleanup()
