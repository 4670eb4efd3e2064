"""The readable reference of layout attention (docs/method.md §2-3): a deliberately naive loop.

Not used by any model. It loops over batch items, objects and heads and indexes cells one region at
a time, written from the method text, so that the vectorised :class:`~layoutdiffuse.nn.adaptor.LayoutAttention`
can be checked against it (``tests/test_layout_attention.py``: equal outputs and gradients), timed
against it (``benchmarks/bench_layout_attention.py``) and read beside it (notebook 03b). It lives in
the package, not in ``tests/``, because the notebook and the benchmark use it too.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .adaptor import LayoutAttention

__all__ = ["naive_rect", "naive_box_prompt_map", "naive_mask_classes", "naive_attend", "naive_branch", "naive_layout_attention"]



def naive_rect(box: torch.Tensor, h: int, w: int) -> tuple[int, int, int, int]:
    """Rows ``r0:r1`` and columns ``c0:c1`` of a box, docs/method.md §2 (products in the box's dtype)."""
    x, y, bw, bh = box[0], box[1], box[2], box[3]
    i0 = min(h - 1, math.floor((y * h).item()))
    j0 = min(w - 1, math.floor((x * w).item()))
    i1 = min(h, i0 + max(1, math.ceil((bh * h).item())))
    j1 = min(w, j0 + max(1, math.ceil((bw * w).item())))
    return max(i0, 0), i1, max(j0, 0), j1


def naive_box_prompt_map(layout: torch.Tensor, table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``layout: (N, 5)`` of one image -> ``(d, h, w)``: mean of covering boxes' rows, null elsewhere."""
    d = table.shape[1]
    total = torch.zeros(d, h, w, device=table.device)
    count = torch.zeros(h, w, device=table.device)
    for box in layout:
        if box[4] < 0:
            continue
        r0, r1, c0, c1 = naive_rect(box, h, w)
        total[:, r0:r1, c0:c1] += table[int(box[4])][:, None, None]
        count[r0:r1, c0:c1] += 1
    null = table[-1][:, None, None].expand(d, h, w)
    return torch.where(count > 0, total / count.clamp(min=1), null)


def naive_mask_classes(mask: torch.Tensor, h: int, w: int, num_classes: int) -> list[list[int]]:
    """``mask: (H, W)`` of one image -> ``h x w`` nested list of prompt rows (ignore -> null row)."""
    H, W = mask.shape
    out = []
    for i in range(h):
        row = []
        for j in range(w):
            c = int(mask[(i * H) // h, (j * W) // w])
            row.append(num_classes if c == 255 else c)
        out.append(row)
    return out


def naive_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(n, c), (m, c), (m, c) -> (n, c)``: softmax(q k^T / sqrt(c)) v."""
    return torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1) @ v


def naive_branch(t: torch.Tensor, cells: torch.Tensor, heads: int, attend) -> torch.Tensor:
    """Attention among ``cells`` of ``t: (3C, L)`` -> ``(C, len(cells))``, one head at a time."""
    c = t.shape[0] // 3
    ch = c // heads
    outs = []
    for head in range(heads):
        sl = slice(head * ch, (head + 1) * ch)
        q = t[sl][:, cells].T
        k = t[c:][sl][:, cells].T
        v = t[2 * c:][sl][:, cells].T
        outs.append(attend(q, k, v).T)
    return torch.cat(outs)


def naive_layout_attention(block: LayoutAttention, x: torch.Tensor, table: torch.Tensor, layout: torch.Tensor | None = None,
                           mask: torch.Tensor | None = None, region: bool = False,
                           attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = naive_attend) -> torch.Tensor:
    """docs/method.md §3, literally: per batch item, per object, per head.

    Box layouts: global branch with the null prompt on every cell, instance branch per object on
    its region, mean over covering objects, a_bg elsewhere. Mask layouts: prompt-augmented global
    attention, or (``region=True``) the instance branch over each class region.

    ``x: (B, C, h, w)``, ``table: (num_classes + 1, D)`` (last row null), ``layout: (B, N, 5)`` or
    ``mask: (B, H, W)`` -> the block's output ``(B, C, h, w)``; ``attend(q, k, v)`` one head's attention.
    """
    b, c, h, w = x.shape
    L = h * w
    nc = table.shape[0] - 1
    heads = block.num_heads
    qkv = block.qkv(block.norm(x).reshape(b, c, L))
    weight = block.prompt_qkv.weight[:, :, None, None]  # the bias-free 1x1 conv
    dev = x.device
    everything = torch.arange(L, device=dev)
    outs = []
    for i in range(b):
        p0_map = table[-1][:, None, None].expand(-1, h, w)
        t0 = qkv[i] + F.conv2d(p0_map[None], weight).reshape(3 * c, L)
        a_bg = naive_branch(t0, everything, heads, attend)
        if mask is not None:
            classes = naive_mask_classes(mask[i], h, w, nc)
            p_map = torch.stack([torch.stack([table[classes[r][s]] for s in range(w)], -1) for r in range(h)], -2)
            t = qkv[i] + F.conv2d(p_map[None], weight).reshape(3 * c, L)
            if not region:
                outs.append(naive_branch(t, everything, heads, attend))
                continue
            flat = [cls for row in classes for cls in row]
            regions = [torch.tensor([l for l in range(L) if flat[l] == cls], dtype=torch.long, device=dev) for cls in range(nc)]
        else:
            objects = layout[i] if layout is not None else torch.zeros(0, 5, device=dev)
            p_map = naive_box_prompt_map(objects, table, h, w)
            t = qkv[i] + F.conv2d(p_map[None], weight).reshape(3 * c, L)
            regions = []
            for box in objects:
                if box[4] < 0:
                    continue
                r0, r1, c0, c1 = naive_rect(box, h, w)
                regions.append(torch.tensor([r * w + s for r in range(r0, r1) for s in range(c0, c1)], device=dev))
        total = torch.zeros(c, L, device=dev)
        count = torch.zeros(L, device=dev)
        for cells in regions:
            if len(cells) == 0:
                continue
            total[:, cells] += naive_branch(t, cells, heads, attend)
            count[cells] += 1
        outs.append(torch.where(count > 0, total / count.clamp(min=1), a_bg))
    a = torch.stack(outs)
    return x + block.proj_out(a).reshape(b, c, h, w)
