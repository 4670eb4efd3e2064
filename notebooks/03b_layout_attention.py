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
# # 03b · Inside the adaptor: instance prompts and layout attention
# What the LayoutDiffuse adaptor does to a feature map, on a real Layout-MNIST canvas and the
# layout-attention block of the shipped model (`layoutdiffuse/weights/layout_mnist.safetensors`)
# at 16×16 (docs/method.md §2-3):
# 1. each box is **rasterised** to the cells it covers at the block's resolution;
# 2. the **instance prompt map** gives each covered cell the mean embedding of its boxes' classes
#    and every other cell the null embedding;
# 3. **layout attention**: self-attention over all cells with the null prompt (background branch),
#    self-attention *inside each box* with the instance prompts (instance branch), fused per cell;
# 4. the same function written the readable way -- a loop over objects, the package's reference
#    `layoutdiffuse.nn.reference` -- beside the vectorised block, and their outputs compared.
#
# Runs in seconds on a CPU; `LAYOUTDIFFUSE_QUICK=1` changes nothing here.

# %%
import inspect

import matplotlib.pyplot as plt
import torch

from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.nn import reference
from layoutdiffuse.nn.adaptor import box_prompt_map, rasterize_boxes
from layoutdiffuse.notebook_helpers import show
from layoutdiffuse.sampling import load_model
from layoutdiffuse.visualize import grid

torch.manual_seed(0)
module = load_model()  # the shipped Layout-MNIST model
val = DATASETS.get("layout_mnist")(split="val", image_size=32, length=16)
sample = max((val[i] for i in range(16)), key=lambda s: len(s["layout"]))  # a canvas with the most digits
layout = sample["layout"][None]  # (1, N, 5): x, y, w, h, class
print("objects (x, y, w, h, class):\n", layout[0])
show(grid(sample["image"][None], layouts=layout, class_names=val.class_names, scale=8), "a validation canvas and its layout", size=4)

# %% [markdown]
# ## 1 · Boxes as cells of the 16×16 feature map
# A box covers rows `floor(y·h)` onward for `max(1, ceil(h_box·h))` rows (clipped), columns
# likewise: every box covers at least one cell at every level, however small.

# %%
H = W = 16
cover = rasterize_boxes(layout, H, W)[0]  # (N, 16, 16) bool
fig, axes = plt.subplots(1, len(cover) + 1, figsize=(3 * (len(cover) + 1), 3))
for i, (ax, cells) in enumerate(zip(axes, cover)):
    ax.imshow(cells, cmap="Greens"); ax.set_title(f"box {i}: digit {val.class_names[int(layout[0, i, 4])]}"); ax.axis("off")
axes[-1].imshow(cover.sum(0), cmap="magma"); axes[-1].set_title("boxes per cell"); axes[-1].axis("off")
plt.show()

# %% [markdown]
# ## 2 · The instance prompt map
# The adaptor's prompt table has one learned row per class plus a null row. Each cell gets the mean
# row of the boxes covering it, or the null row. Shown: the first two principal directions of the
# map's 128-dimensional cells (cells with the same prompt have the same colour).

# %%
net = module.sampling_model  # the EMA weights, what sampling uses
adaptor = net.adaptor
table = adaptor.prompt_table.weight.detach()  # (num_classes + 1, 128); the last row is null
prompts = box_prompt_map(layout, table, H, W)[0]  # (128, 16, 16)
flat = prompts.flatten(1).T  # (256, 128)
_, _, v = torch.pca_lowrank(flat - flat.mean(0), q=2)
pc = (flat - flat.mean(0)) @ v
pc = (pc - pc.min(0).values) / (pc.max(0).values - pc.min(0).values + 1e-8)
plt.figure(figsize=(3.5, 3.5))
plt.imshow(torch.stack([pc[:, 0], pc[:, 1], 0.5 * torch.ones(len(pc))], -1).reshape(H, W, 3))
plt.title("instance prompt map (2 PCs)"); plt.axis("off"); plt.show()
null_cells = (flat == table[-1]).all(1).sum().item()
print(f"{null_cells} of {H * W} cells hold the null prompt; {int((cover.sum(0) > 1).sum())} cells are covered by two boxes")

# %% [markdown]
# ## 3 · A real feature map entering the block
# Run the shipped model once on the noised canvas and catch what enters its 16×16 layout-attention
# block (a forward hook), together with the state the adaptor prepared for its blocks in this pass
# (`AdaptorState`: the layout, the shared prompt table, the region bookkeeping).

# %%

caught = {}


def catch(mod, args, output):
    if args[0].shape[-1] == H:
        caught.setdefault("x", args[0].detach())
        caught.setdefault("state", args[1])
        caught.setdefault("block", mod)


hooks = [b.register_forward_hook(catch) for b in adaptor.blocks.values()]
t = torch.tensor([400])
x_t = module.diffusion.q_sample(sample["image"][None], t, torch.randn(1, 1, 32, 32))
with torch.no_grad():
    net(x_t, t, {"layout": layout})
for h in hooks:
    h.remove()
block, x, state = caught["block"], caught["x"], caught["state"]
print(f"block: {block.channels} channels, {block.num_heads} head(s); features {tuple(x.shape)}")

# %% [markdown]
# ## 4 · Layout attention, the readable way
# Per object, per head: attention among the object's own cells with the instance prompts added,
# the background attention over all cells with the null prompt, then the per-cell fusion. This is
# what the block computes; the package does it with one batched attention call over every
# (batch item, head, object) group instead of these loops. The loop is the package's readable
# reference (`layoutdiffuse/nn/reference.py`, which the tests and the benchmark check the block
# against); its source:

# %%
print(inspect.getsource(reference.naive_branch))
print(inspect.getsource(reference.naive_layout_attention))

# %%
with torch.no_grad():
    fast = block(x, state)
    slow = reference.naive_layout_attention(block, x, state.prompt_table, layout=layout)
print(f"largest difference, vectorised vs readable: {(fast - slow).abs().max().item():.2e} "
      f"(output scale {fast.abs().max().item():.2f})")
assert torch.allclose(fast, slow, atol=1e-4, rtol=1e-4)

# %% [markdown]
# ## 5 · What the block changes
# The residual the block adds (`proj_out` of the fused attention), summed over channels, with the
# boxes drawn. Uncovered cells change too (the background branch attends over the whole map with
# the null prompt); the printed means compare the change inside and outside the boxes.

# %%
delta = (fast - x)[0].abs().sum(0)
fig, axes = plt.subplots(1, 2, figsize=(7, 3.5))
axes[0].imshow(x[0].abs().sum(0), cmap="viridis"); axes[0].set_title("|features| entering"); axes[0].axis("off")
axes[1].imshow(delta, cmap="inferno"); axes[1].set_title("|block residual|"); axes[1].axis("off")
for ax in axes:
    for x0, y0, bw, bh, _ in layout[0].tolist():
        ax.add_patch(plt.Rectangle((x0 * W - 0.5, y0 * H - 0.5), bw * W, bh * H, fill=False, ec="w", lw=1.5))
plt.show()
inside = cover.any(0)
print(f"mean residual inside boxes {delta[inside].mean():.3f}, outside {delta[~inside].mean():.3f}")
