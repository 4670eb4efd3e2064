"""The LayoutDiffuse neural adaptor: instance prompts, layout attention, task-aware prompts.

docs/method.md §2-4, computed without Python loops over batch items, heads or objects.

* :func:`rasterize_boxes` -- which feature cells a box covers at a resolution ``(h, w)``.
* :func:`box_prompt_map`, :func:`mask_prompt_map` -- instance prompts: the embedding of the
  object(s) covering each cell (mean over covering boxes), the null embedding elsewhere.
* :class:`LayoutAttention` -- the residual layout-attention block (global branch with null
  prompts + instance branch restricted to each object's region, fused by the mean).
* :class:`TaskPromptAttention` -- task-aware prompts for the self-attention blocks of an
  unconditional foundation.
* :class:`LayoutAdaptor` -- holds all of the above; :meth:`LayoutAdaptor.attach` inserts it into a
  :class:`~layoutdiffuse.nn.unet.UNet` (``UNet(layout={...})`` calls it).

How the instance branch is vectorised: every object's region is gathered into a padded group of
cells by index tensors; groups are sorted by size into a few *buckets* (chosen by a small cost
model, so one large box does not pad every small box to its size); each bucket is one
``scaled_dot_product_attention`` call over all ``(group, head)`` pairs with a key-padding mask;
the results are scatter-added back (``index_add``) and divided by the number of covering objects.
The global branch is only needed where no object lies, so its queries are gathered from the
uncovered cells alone (keys and values are still all cells); that is the same function at a
fraction of the cost of full attention when the boxes cover much of the image. The index
bookkeeping (:class:`Regions`) is computed once per resolution and forward pass and shared by
every block at that resolution (in the :class:`~layoutdiffuse.nn.blocks.AdaptorState` that
:meth:`LayoutAdaptor.prepare` makes; the caller's condition dict is never written to).

The layout is checked once at the boundary (:func:`layoutdiffuse.conditions.check_condition`, which
the sampling and training model functions and the data loader's collate run), not at every forward
pass: the blocks trust it (only its batch size is compared, at no cost).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layout import IGNORE, LayoutError, empty_layout, validity
from .options import MASK_PICKS, LayoutAdaptorOptions
from .phrase_encoder import PhraseEncoder
from .blocks import AdaptorState, AttentionBlock, Cond, ConditionBlock, EmbedBlock, group_norm, zero_module
from ..errors import UserError

log = logging.getLogger(__name__)

#: the cond key of the prompt table of a :class:`LayoutAttention` used on its own (a block inside
#: an adapted network gets the adaptor's table through :class:`~layoutdiffuse.nn.blocks.AdaptorState`)
PROMPT_TABLE = "prompt_table"

#: fixed cost of one extra attention call (one bucket) in the units of the bucket cost model
#: (``groups * queries * keys * channels``), by device type. Tuned on CPU with
#: benchmarks/bench_layout_attention.py (1e5..1e7 all within 10%; one bucket for all is 2x slower).
#: On CUDA a call costs far more relative to its arithmetic, so fewer, fuller buckets win.
BUCKET_OVERHEAD = {"cpu": 1e6, "cuda": 1e8}


# ---------------------------------------------------------------------------------------------
# Instance prompts (docs/method.md §2)
# ---------------------------------------------------------------------------------------------

def rasterize_boxes(layout: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Cells covered by each box at resolution ``(h, w)``.

    ``layout: (B, N, 5)`` rows ``(x, y, w, h, class)`` -> bool ``(B, N, h, w)``.
    Rows ``i0 = min(h-1, floor(y*h))`` to ``i0 + max(1, ceil(h_box*h))`` (exclusive, clipped to
    ``h``), columns likewise from ``x`` and ``w_box``; so every box covers at least one cell.
    Padding rows (class -1) cover nothing. Products are computed in the layout's dtype.
    """
    if layout.ndim != 3 or layout.shape[-1] != 5:
        raise LayoutError(f"layout must have shape (B, N, 5), got {tuple(layout.shape)}")
    x, y, bw, bh = layout[..., 0], layout[..., 1], layout[..., 2], layout[..., 3]

    def span(start: torch.Tensor, size: torch.Tensor, n: int) -> torch.Tensor:
        i0 = torch.floor(start * n).clamp(max=n - 1)
        i1 = i0 + torch.ceil(size * n).clamp(min=1)
        cells = torch.arange(n, device=layout.device, dtype=layout.dtype)
        return (cells >= i0[..., None]) & (cells < i1[..., None])  # (B, N, n)

    rows, cols = span(y, bh, h), span(x, bw, w)
    return rows[..., :, None] & cols[..., None, :] & validity(layout)[..., None, None]


def _check_classes(classes: torch.Tensor, num_classes: int, what: str) -> None:
    bad = (classes >= num_classes) | (classes < 0)
    if bool(bad.any()):
        given = sorted(set(classes[bad].long().tolist()))[:10]
        raise LayoutError(f"{what} has class ids {given} outside [0, {num_classes}) "
                          f"(the prompt table has num_classes={num_classes} + 1 null rows)")


def _box_classes(layout: torch.Tensor) -> torch.Tensor:
    """Class ids of a checked ``layout: (B, N, 5)`` as long ``(B, N)``, padding -> 0 (it covers nothing)."""
    cls = layout[..., 4]
    return torch.where(validity(layout), cls, torch.zeros_like(cls)).long()


def box_prompt_map(layout: torch.Tensor, table: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Instance prompt map of box layouts.

    ``layout: (B, N, 5)``, ``table: (num_classes + 1, D)`` (last row = null) -> ``(B, D, h, w)``:
    each cell covered by >= 1 box holds the mean of the covering boxes' rows, others the null row.
    """
    b = layout.shape[0]
    cover = rasterize_boxes(layout, h, w).reshape(b, layout.shape[1], h * w)
    count = cover.sum(1)[..., None]
    cls = layout[..., 4][validity(layout)]
    if bool((cls != cls.round()).any()):
        raise LayoutError(f"layout class ids must be integers, got {cls[cls != cls.round()][:10].tolist()}")
    _check_classes(cls, table.shape[0] - 1, "layout")
    rows = table[_box_classes(layout)]
    mean = (cover.transpose(1, 2).to(rows.dtype) @ rows) / count.clamp(min=1).to(rows.dtype)
    return torch.where(count > 0, mean, table[-1]).transpose(1, 2).reshape(b, -1, h, w)


def subsample_mask(mask: torch.Tensor, h: int, w: int, pick: str = "top_left") -> torch.Tensor:
    """Strided pick of ``mask: (B, H, W)`` at ``(h, w)`` -> ``(B, h, w)``.

    ``pick="top_left"``: cell ``(i, j)`` takes ``mask[floor(i*H/h), floor(j*W/w)]`` (the top-left
    pixel of its block when ``H`` is a multiple of ``h``). ``pick="centre"``: the centre pixel of each
    ``r x r`` block, ``mask[:, r//2::r, r//2::r]`` with ``r = H // h`` (the original release's pick;
    ``H``, ``W`` must be ``r`` times ``h``, ``w``).
    """
    if mask.ndim != 3:
        raise LayoutError(f"mask layout must have shape (B, H, W), got {tuple(mask.shape)}")
    if pick not in MASK_PICKS:
        raise UserError(f"unknown mask pick '{pick}'; choose one of: {', '.join(MASK_PICKS)}")
    H, W = mask.shape[-2:]
    if pick == "centre":
        r = H // h
        if r < 1 or H != r * h or W != r * w:
            raise LayoutError(f"centre-pixel mask subsampling needs a mask size that is a multiple of the feature size; "
                              f"got mask {H}x{W} for features {h}x{w}")
        return mask[:, r // 2::r, r // 2::r]
    rows = torch.arange(h, device=mask.device) * H // h
    cols = torch.arange(w, device=mask.device) * W // w
    return mask[:, rows][:, :, cols]


def _mask_classes(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A checked ``mask`` with :data:`IGNORE` mapped to the null row ``num_classes`` (long)."""
    mask = mask.long()
    return torch.where(mask == IGNORE, torch.full_like(mask, num_classes), mask)


def mask_prompt_map(mask: torch.Tensor, table: torch.Tensor, h: int, w: int, pick: str = "top_left") -> torch.Tensor:
    """Instance prompt map of mask layouts.

    ``mask: (B, H, W)`` long part classes (255 = ignore), ``table: (num_classes + 1, D)`` ->
    ``(B, D, h, w)``: the mask subsampled to ``(h, w)`` (:func:`subsample_mask` with ``pick``), each cell
    the row of its class, ignore -> the null row.
    """
    mask = subsample_mask(mask, h, w, pick).long()
    _check_classes(mask[mask != IGNORE], table.shape[0] - 1, f"mask layout (ignore value {IGNORE} allowed)")
    return table[_mask_classes(mask, table.shape[0] - 1)].permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------------------------
# Region groups: the index bookkeeping shared by every layout-attention block at one resolution
# ---------------------------------------------------------------------------------------------

@dataclass
class _Bucket:
    """One attention call over ``G`` padded groups of ``K`` query cells.

    ``gather: (G, K)`` rows of the flattened ``(B*L, ...)`` tokens (padding -> row 0);
    ``scatter: (G*K,)`` the same rows with padding -> ``B*L`` (a dropped row);
    ``key_mask: (G, 1, 1, K)`` bool, or ``None`` when no group is padded or the keys are all cells;
    ``items: (G,)`` the batch item of each group.
    """

    gather: torch.Tensor
    scatter: torch.Tensor
    key_mask: torch.Tensor | None
    items: torch.Tensor


@dataclass
class Regions:
    """The layout at one resolution, for every block that runs there.

    ``weights: (B, L, N)`` 1 / (objects covering the cell) where object n covers it, else 0 (so
    ``weights @ rows`` is the mean of the covering objects' prompt rows, 0 on uncovered cells);
    ``inv_count: (B, L, 1)`` 1 / (objects covering the cell), 1 where none; ``classes: (B, N)``
    long prompt-table rows; ``instance`` / ``background`` the buckets of the two branches (background: queries are the
    uncovered cells, keys all cells of the bucket's items); ``gather`` all buckets' query rows,
    instance buckets first, so one ``index_select`` serves every bucket; ``key_order: (B,)`` the
    batch items in background-bucket order (``None`` when that is ``0..B-1``).
    """

    weights: torch.Tensor
    inv_count: torch.Tensor
    classes: torch.Tensor
    instance: list[_Bucket]
    background: list[_Bucket]
    gather: torch.Tensor
    key_order: torch.Tensor | None


def _plan_sizes(sizes: list[int], counts: list[int], keys: int | None, width: int, overhead: float) -> list[int]:
    """Choose bucket upper bounds for groups of the given distinct ``sizes`` (ascending) and ``counts``.

    A bucket holding groups of sizes in ``(lo, hi]`` costs ``overhead + n * hi * (keys or hi) * width``
    (padded attention work); a dynamic programme over the (at most ~48, geometrically merged)
    distinct sizes minimises the total. Returns the bounds ``hi`` (ascending).
    """
    if len(sizes) > 48:  # merge sizes within ~10% of a bin's smallest, keeping the largest as the bound
        merged_s: list[int] = []
        merged_c: list[int] = []
        first = -1
        for s, c in zip(sizes, counts):
            if merged_s and s <= first * 1.1 + 1:
                merged_s[-1] = s
                merged_c[-1] += c
            else:
                first = s
                merged_s.append(s)
                merged_c.append(c)
        sizes, counts = merged_s, merged_c
    cum = [0]
    for c in counts:
        cum.append(cum[-1] + c)
    best = [0.0] + [math.inf] * len(sizes)
    cut = [0] * (len(sizes) + 1)
    for j in range(1, len(sizes) + 1):
        hi = sizes[j - 1]
        per_group = hi * (keys if keys is not None else hi) * width
        for i in range(j):
            cost = best[i] + overhead + (cum[j] - cum[i]) * per_group
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds, j = [], len(sizes)
    while j:
        bounds.append(sizes[j - 1])
        j = cut[j]
    return bounds[::-1]


def _buckets(member: torch.Tensor, item: torch.Tensor, length: int, keys: int | None, width: int, overhead: float,
             dropped_row: int) -> list[_Bucket]:
    """Padded, bucketed index tables for groups of cells.

    ``member: (G, L)`` bool (cells of each group), ``item: (G,)`` the batch item of each group,
    ``length`` = L. ``keys=None``: the instance branch (keys = the group's own cells, masked);
    ``keys=L``: the global branch (keys = all cells of the item). Empty groups are dropped;
    padding slots scatter to ``dropped_row``.
    """
    sizes = member.sum(1)
    distinct, counts = torch.unique(sizes[sizes > 0], return_counts=True)
    if len(distinct) == 0:
        return []
    bounds = _plan_sizes(distinct.tolist(), counts.tolist(), keys, width, overhead)
    g, cell = member.nonzero(as_tuple=True)  # sorted by group, then cell
    starts = sizes.cumsum(0) - sizes
    rank = torch.arange(len(g), device=member.device) - starts[g]
    table = torch.zeros(member.shape[0], bounds[-1], dtype=torch.long, device=member.device)
    table[g, rank] = item[g] * length + cell
    out, lo = [], 0
    for hi in bounds:
        groups = ((sizes > lo) & (sizes <= hi)).nonzero(as_tuple=True)[0]
        size = sizes[groups]
        k = int(size.max())
        gather = table[groups, :k]
        valid = torch.arange(k, device=member.device) < size[:, None]
        scatter = torch.where(valid, gather, torch.full_like(gather, dropped_row)).reshape(-1)
        key_mask = None if keys is not None or bool(valid.all()) else valid[:, None, None, :]
        out.append(_Bucket(gather, scatter, key_mask, item[groups]))
        lo = hi
    return out


def build_regions(cover: torch.Tensor, classes: torch.Tensor, width: int, overhead: float | None = None) -> Regions:
    """Bookkeeping for ``cover: (B, N, h, w)`` bool regions with prompt rows ``classes: (B, N)``.

    ``width`` = channels; it only steers the bucket plan (see :data:`BUCKET_OVERHEAD`), so blocks
    of other widths at the same resolution may share the result. Needs a few host syncs (bucket
    sizes), once per resolution and forward pass.
    """
    b, n = cover.shape[:2]
    cover = cover.flatten(2)
    length = cover.shape[-1]
    if overhead is None:
        overhead = BUCKET_OVERHEAD.get(cover.device.type, BUCKET_OVERHEAD["cuda"])
    count = cover.sum(1)
    arange_b = torch.arange(b, device=cover.device)
    dropped = b * length
    instance = _buckets(cover.reshape(b * n, length), arange_b.repeat_interleave(n), length, None, width, overhead, dropped)
    background = _buckets(count == 0, arange_b, length, length, width, overhead, dropped)
    inv_count = 1.0 / count.clamp(min=1)[..., None]
    weights = cover.transpose(1, 2) * inv_count
    key_order = torch.cat([bucket.items for bucket in background]) if background else None
    if key_order is not None and len(key_order) == b and bool((key_order == arange_b).all()):
        key_order = None
    gather = (torch.cat([bucket.gather.reshape(-1) for bucket in instance + background]) if instance
              else torch.zeros(0, dtype=torch.long, device=cover.device))
    return Regions(weights, inv_count, classes, instance, background, gather, key_order)


# ---------------------------------------------------------------------------------------------
# Layout attention (docs/method.md §3)
# ---------------------------------------------------------------------------------------------

class LayoutAttention(ConditionBlock):
    """Residual layout attention; ``x: (B, C, h, w)`` -> same shape.

    ``x -> GroupNorm -> 1x1 conv -> q, k, v``; the instance prompt map ``P`` and the null map
    ``P0`` go through one bias-free 1x1 projection to ``pq, pk, pv`` / ``pq0, pk0, pv0``.

    * box layouts (``cond["layout"]: (B, N, 5)``): global branch = self-attention over all cells
      with ``q+pq0, k+pk0, v+pv0`` (``a_bg``); instance branch = for each object, self-attention
      restricted to its region with ``q+pq, k+pk, v+pv``; a covered cell takes the mean of its
      objects' results, an uncovered cell ``a_bg``.
    * mask layouts (``mask=True``, ``cond["mask"]: (B, H, W)``, 255 = ignore): prompt-augmented
      global attention over all cells with ``q+pq, k+pk, v+pv`` (the reference); with
      ``region_mask_attention=True`` the instance branch above with regions = the mask's class
      regions (ignore cells take ``a_bg``). ``mask_pick`` chooses how the mask is subsampled to the
      block's resolution (:func:`subsample_mask`: ``top_left`` or the release's ``centre``).

    Output ``x + proj_out(a)``, ``proj_out`` zero-initialised: a new block is an exact identity.
    ``cond`` of ``None``, without the layout, or with 0 objects acts as the empty layout.

    ``cond``: inside an adapted network the adaptor's :class:`~layoutdiffuse.nn.blocks.AdaptorState`
    (its prompt table ``(num_classes + 1, embed_dim)``, last row null, shared by every block, and the
    region bookkeeping shared by the blocks of one resolution). A block used on its own takes a
    condition dict, its table from ``cond["prompt_table"]`` or, built with ``num_classes``, its own.
    The layout must be checked before (:func:`layoutdiffuse.conditions.check_condition`).
    Since the 1x1 projection is linear, it is applied to the table rows before averaging
    (``proj(mean(e)) = mean(proj(e))``): the same function, far cheaper than projecting a map.
    """

    def __init__(self, channels: int, embed_dim: int = 128, num_heads: int = 1, mask: bool = False,
                 region_mask_attention: bool = False, num_classes: int | None = None, mask_pick: str = "top_left"):
        super().__init__()
        if mask_pick not in MASK_PICKS:
            raise UserError(f"unknown mask_pick '{mask_pick}'; choose one of: {', '.join(MASK_PICKS)}")
        if channels % num_heads:
            raise UserError(f"layout attention channels {channels} not divisible by num_heads {num_heads}")
        if region_mask_attention and not mask:
            raise UserError("region_mask_attention=True needs mask=True (it applies to mask layouts)")
        self.channels, self.num_heads, self.embed_dim = channels, num_heads, embed_dim
        self.mask, self.region_mask_attention, self.mask_pick = mask, region_mask_attention, mask_pick
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.prompt_qkv = nn.Linear(embed_dim, 3 * channels, bias=False)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))
        self.prompt_table = nn.Embedding(num_classes + 1, embed_dim) if num_classes is not None else None

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, mask={self.mask}, region_mask_attention={self.region_mask_attention}"

    def state(self, cond: Cond) -> AdaptorState:
        """``cond`` as an :class:`~layoutdiffuse.nn.blocks.AdaptorState` (a block used on its own:
        the dict's layout or mask and ``prompt_table``, else the block's own table)."""
        if isinstance(cond, AdaptorState):
            return cond
        cond = cond or {}
        if PROMPT_TABLE in cond:
            table = cond[PROMPT_TABLE]
        elif self.prompt_table is not None:
            table = self.prompt_table.weight
        else:
            raise KeyError(f"LayoutAttention needs the adaptor's prompt table (inside an adapted UNet) or cond['{PROMPT_TABLE}'], "
                           "or build the block with num_classes=... to own one")
        return AdaptorState(table, layout=cond.get("layout"), mask=cond.get("mask"))

    def _regions(self, state: AdaptorState, num_classes: int, b: int, h: int, w: int, device: torch.device) -> Regions | torch.Tensor:
        """Box / region-mask modes: :class:`Regions` (shared through ``state.regions`` per resolution);
        global mask mode: the prompt-row index map ``(B, L)``."""
        key = (self.mask, self.region_mask_attention, self.mask_pick, h, w)
        if key in state.regions:
            return state.regions[key]
        if self.mask:
            mask = state.mask
            if mask is None:
                mask = torch.full((b, h, w), IGNORE, dtype=torch.long, device=device)
            _check_batch(mask, b, "mask")
            idx = _mask_classes(subsample_mask(mask.to(device), h, w, self.mask_pick), num_classes).reshape(b, h * w)
            if not self.region_mask_attention:
                out: Regions | torch.Tensor = idx
            else:
                cover = idx[:, None, :] == torch.arange(num_classes, device=device)[None, :, None]
                out = build_regions(cover, torch.arange(num_classes, device=device).expand(b, -1), self.channels)
        else:
            layout = state.layout
            if layout is None:
                layout = empty_layout(b, device)
            _check_batch(layout, b, "layout")
            layout = layout.to(device)
            out = build_regions(rasterize_boxes(layout, h, w), _box_classes(layout), self.channels)
        state.regions[key] = out
        return out

    def forward(self, x: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        b, c, h, w = x.shape
        state = self.state(cond)
        table = state.prompt_table
        ptab = self.prompt_qkv(table)  # (num_classes + 1, 3C): the projection of every prompt row
        # the 1x1 convs run as matmuls on (B, L, C) tokens (same parameters, cheaper on CPU)
        normed = self.norm(x).reshape(b, c, h * w).transpose(1, 2)
        tokens = F.linear(normed, self.qkv.weight[..., 0], self.qkv.bias)  # (B, L, 3C)
        regions = self._regions(state, table.shape[0] - 1, b, h, w, x.device)
        if isinstance(regions, torch.Tensor):  # mask layout, prompt-augmented global attention
            q, k, v = _heads(tokens + F.embedding(regions, ptab), self.num_heads)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        else:
            a = region_attention(tokens, ptab, regions, self.num_heads)
        out = F.linear(a, self.proj_out.weight[..., 0], self.proj_out.bias)  # (B, L, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


def _check_batch(t: torch.Tensor, b: int, what: str) -> None:
    if t.shape[0] != b:
        raise LayoutError(f"{what} has batch size {t.shape[0]} but the features have batch size {b}")


def _heads(tokens: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(G, K, 3C)`` -> q, k, v each ``(G, heads, K, C // heads)`` (channel order of
    :func:`~layoutdiffuse.nn.blocks.split_heads`; last dimension contiguous, as fused attention wants)."""
    g, k, c3 = tokens.shape
    q, k, v = tokens.reshape(g, k, 3, heads, c3 // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)  # unbind: no zero-filled grads
    return q, k, v


def region_attention(tokens: torch.Tensor, ptab: torch.Tensor, regions: Regions, heads: int) -> torch.Tensor:
    """Fused layout attention of docs/method.md §3 before ``proj_out``.

    ``tokens: (B, L, 3C)`` = q|k|v per cell, ``ptab: (num_classes + 1, 3C)`` projected prompt rows
    (last = null) -> ``a: (B, L, C)``: mean over covering objects of the region-restricted
    attention with ``+ pqkv``; the null-prompted global attention on uncovered cells.

    The global branch uses ``softmax((q+pq0) k^T) v + pv0``: the same function as attention with
    ``k+pk0, v+pv0`` (the ``pk0`` term of a logit is the same for every key, so softmax drops it,
    and the attention weights sum to 1) without a prompted copy of every cell's keys and values.
    """
    b, length, c3 = tokens.shape
    c = c3 // 3
    pq0, pv0 = ptab[-1, :c], ptab[-1, 2 * c:]
    if not regions.instance:  # nothing covered anywhere: plain global attention
        _, k, v = _heads(tokens, heads)
        q = (tokens[..., :c] + pq0).reshape(b, length, heads, c // heads).transpose(1, 2)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, c) + pv0
    # q|k|v + mean of the covering objects' projected prompts; exactly q|k|v on uncovered cells
    prompted = torch.baddbmm(tokens, regions.weights.to(tokens.dtype), F.embedding(regions.classes, ptab))
    sizes = [bk.gather.numel() for bk in regions.instance + regions.background]
    chunks = list(prompted.reshape(b * length, c3).index_select(0, regions.gather).split(sizes))  # one gather
    out = tokens.new_zeros(b * length + 1, c)  # the last row collects padding slots
    for bucket in regions.instance:  # a handful of size buckets, each one call over all its groups
        g, k = bucket.gather.shape
        q, kk, v = _heads(chunks.pop(0).reshape(g, k, c3), heads)
        o = F.scaled_dot_product_attention(q, kk, v, attn_mask=bucket.key_mask)
        out.index_add_(0, bucket.scatter, o.transpose(1, 2).reshape(g * k, c))
    if regions.background:  # queries: uncovered cells only; keys/values: all cells of the items
        keys = tokens if regions.key_order is None else tokens.index_select(0, regions.key_order)
        key_chunks = keys.split([len(bk.items) for bk in regions.background])
        for bucket, query, kv in zip(regions.background, chunks, key_chunks):
            g, k = bucket.gather.shape
            q = (query[:, :c] + pq0).reshape(g, k, heads, c // heads).transpose(1, 2)
            _, kk, v = _heads(kv, heads)
            o = F.scaled_dot_product_attention(q, kk, v)
            out.index_add_(0, bucket.scatter, o.transpose(1, 2).reshape(g * k, c) + pv0)
    return out[:-1].reshape(b, length, c) * regions.inv_count.to(out.dtype)


# ---------------------------------------------------------------------------------------------
# Task-aware prompts (docs/method.md §4, unconditional foundation)
# ---------------------------------------------------------------------------------------------

class TaskPromptAttention(nn.Module):
    """Task-aware prompts for one self-attention block; installed as ``AttentionBlock.task_prompt``.

    ``q: (B, heads, L, c)``, ``tokens: (T, prompt_dim)`` -> ``(B, heads, L, c)``:
    ``gate * softmax(q pk^T / sqrt(c)) pv`` with ``pk, pv`` = bias-free projection of the tokens.
    The block adds this to its own attention: ``a = sdpa(q, k, v) + gate * sdpa(q, pk, pv)``.

    Why a gated second attention instead of concatenating the projected tokens to the keys and
    values: zero-initialised projections still take softmax mass (every extra logit is 0, not
    -inf), so concatenation changes the output at initialisation. A zero-initialised per-head
    ``gate`` keeps the adapted model *exactly* the foundation at the start, while the projection
    is randomly initialised so that the gate receives a useful gradient from the first step.
    """

    def __init__(self, channels: int, prompt_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.proj = nn.Linear(prompt_dim, 2 * channels, bias=False)
        self.gate = nn.Parameter(torch.zeros(num_heads))

    def forward(self, q: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, heads, _, ch = q.shape
        pk, pv = (t.reshape(1, -1, heads, ch).transpose(1, 2).expand(b, -1, -1, -1).to(q.dtype)
                  for t in self.proj(tokens).chunk(2, dim=-1))  # (B, heads, T, c)
        out = F.scaled_dot_product_attention(q, pk, pv)
        return self.gate.to(out.dtype)[None, :, None, None] * out


# ---------------------------------------------------------------------------------------------
# The adaptor
# ---------------------------------------------------------------------------------------------

class LayoutAdaptor(nn.Module):
    """All adaptor state of a layout UNet (lives at ``unet.adaptor``; task-prompt modules live at
    ``<attention block>.task_prompt``).

    ``blocks``: hook key -> :class:`LayoutAttention` (the UNet runs ``blocks[key](h, cond)`` after
    block ``key``); ``prompt_table``: ``(num_classes + 1, embed_dim)`` instance prompts (last row
    null), shared by every block; ``task_prompts``: ``(num_task_prompts, embed_dim)`` or ``None``.

    With text prompts (``instance_prompt: "text"``) a box's prompt is its phrase (``cond["box_text"]``)
    encoded by ``phrase_encoder``: any module with ``encode(phrases) -> (P, embed_dim)`` -- the toys'
    :class:`~layoutdiffuse.nn.phrase_encoder.PhraseEncoder` (built here from ``vocabulary``) or a
    foundation's (:class:`~layoutdiffuse.sd.phrases.FoundationPhraseEncoder`, given). ``prompt_table``
    then holds only the null row. Each forward pass turns the batch's distinct phrases into a prompt
    table of its own (:meth:`phrase_table`), so the same layout attention serves both kinds of prompt.
    """

    def __init__(self, block_channels: dict[str, int], num_classes: int, embed_dim: int = 128, num_heads: int = 1,
                 num_task_prompts: int = 64, mask: bool = False, region_mask_attention: bool = False, mask_pick: str = "top_left",
                 vocabulary: tuple[str, ...] = (), max_words: int = 16, phrase_encoder: nn.Module | None = None):
        super().__init__()
        if vocabulary and phrase_encoder is not None:
            raise UserError("a text adaptor takes a vocabulary (the toys' phrase encoder) or a phrase encoder, not both")
        text = bool(vocabulary) or phrase_encoder is not None
        if num_classes < 1 and not text:
            raise UserError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes, self.mask = (0 if text else num_classes), mask
        self.blocks = nn.ModuleDict({key: LayoutAttention(ch, embed_dim, num_heads, mask, region_mask_attention, mask_pick=mask_pick)
                                     for key, ch in block_channels.items()})
        self.prompt_table = nn.Embedding(self.num_classes + 1, embed_dim)
        self.phrase_encoder = PhraseEncoder(vocabulary, embed_dim, max_words) if vocabulary else phrase_encoder
        self.task_prompts = nn.Parameter(torch.randn(num_task_prompts, embed_dim)) if num_task_prompts else None

    @property
    def reads_text(self) -> bool:
        """True when a box's prompt comes from its phrase (``cond["box_text"]``), not a class."""
        return self.phrase_encoder is not None

    @property
    def condition_classes(self) -> dict[str, int]:
        """The condition kind this adaptor reads and its number of classes (for the boundary check;
        none for text prompts, whose layout rows only mark boxes and padding)."""
        return {} if self.reads_text else {"mask" if self.mask else "layout": self.num_classes}

    def phrase_table(self, layout: torch.Tensor, box_text: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Text prompts of one forward pass: ``layout: (B, N, 5)`` and ``box_text`` (``B`` lists of
        phrases, one per real row in row order) -> ``(table (P + 1, D), layout)``: the ``P`` distinct
        phrases encoded once (last row null) and the layout with each real row's class set to its
        phrase's row of that table."""
        valid = validity(layout)
        counts = valid.sum(1).tolist()
        if box_text is None:
            if any(counts):
                raise UserError("this model reads a phrase per box (cond['box_text']: one list of phrases per image); "
                                "a layout's labels are its phrases (layoutdiffuse.sample and the layout files turn them into text)")
            box_text = [[] for _ in counts]
        if len(box_text) != len(counts) or any(len(t) != c for t, c in zip(box_text, counts)):
            given = [len(t) for t in box_text]
            raise UserError(f"cond['box_text'] must give one phrase per box: the layout has {counts} boxes per image, "
                            f"box_text {given} phrases")
        flat = [p for texts in box_text for p in texts]
        rows = {p: i for i, p in enumerate(dict.fromkeys(flat))}
        null = self.prompt_table.weight
        table = torch.cat([self.phrase_encoder.encode(list(rows)).to(null.dtype), null])
        layout = layout.clone()
        ids = torch.tensor([float(rows[p]) for p in flat], dtype=layout.dtype, device=layout.device)
        layout[..., 4] = layout[..., 4].masked_scatter(valid, ids)
        return table, layout

    def prepare(self, cond: Cond, batch_size: int) -> AdaptorState:
        """The state of one forward pass for the adaptor's blocks: the layout (or mask) of ``cond``
        (absent: the empty layout ``(batch_size, 0, 5)``), the prompt table, the task prompts and an
        empty region cache. ``cond`` is read, never written; it is checked at the boundary
        (:func:`layoutdiffuse.conditions.check_condition`), here only its batch size (no host sync)."""
        cond = cond or {}
        device = self.prompt_table.weight.device
        state = AdaptorState(self.prompt_table.weight, task_prompts=self.task_prompts)
        if self.mask:
            state.mask = cond.get("mask")
            if state.mask is not None:
                _check_batch(state.mask, batch_size, "mask")
        else:
            layout = cond.get("layout")
            if layout is None:
                layout = empty_layout(batch_size, device)
            if not isinstance(layout, torch.Tensor) or layout.ndim != 3 or layout.shape[0] != batch_size or layout.shape[-1] != 5:
                raise LayoutError(f"layout must be a tensor of shape ({batch_size}, N, 5) for a batch of {batch_size}, "
                                  f"got {tuple(layout.shape) if isinstance(layout, torch.Tensor) else type(layout).__name__}")
            state.layout = layout.to(device)
            if self.reads_text:
                state.prompt_table, state.layout = self.phrase_table(state.layout, cond.get("box_text"))
        return state

    @classmethod
    def attach(cls, unet: nn.Module, **options: Any) -> "LayoutAdaptor":
        """Build the adaptor for ``unet`` and insert it (``unet.adaptor``, ``task_prompt`` on every
        :class:`~layoutdiffuse.nn.blocks.AttentionBlock`); ``options``: :class:`~layoutdiffuse.nn.options.LayoutAdaptorOptions`
        (its defaults; ``num_classes`` required).

        A :class:`LayoutAttention` follows every input/output block holding a ResBlock and the
        middle block, at the levels (downsample exponents) in ``levels``; input_0 (the stem conv)
        and downsample-only blocks get none. Returns the adaptor.
        """
        opts = LayoutAdaptorOptions.parse(options)
        levels = opts.levels
        n_levels = len(unet.config["channel_mult"])
        bad = [lvl for lvl in levels if not 0 <= lvl < n_levels]
        if bad:
            raise UserError(f"adaptor levels {bad} out of range; this UNet has levels 0..{n_levels - 1}")
        if unet.adaptor is not None:
            raise UserError("this UNet already has a layout adaptor")
        named = {f"input_{i}": blk for i, blk in enumerate(unet.input_blocks)} | {"middle": unet.middle_block}
        named |= {f"output_{i}": blk for i, blk in enumerate(unet.output_blocks)}
        chosen = {key: ch for key, (level, ch) in unet.block_info.items()
                  if level in levels and any(isinstance(m, EmbedBlock) for m in named[key])}  # has a ResBlock
        if not chosen:
            raise UserError(f"no UNet block at levels {list(levels)} to attach layout attention to")
        param = next(unet.parameters())
        adaptor = cls(chosen, opts.num_classes, opts.embed_dim, opts.num_heads, opts.num_task_prompts, opts.mask,
                      opts.region_mask_attention, opts.mask_pick, opts.vocabulary if opts.instance_prompt == "text" else (),
                      opts.max_words)
        unet.adaptor = adaptor.to(device=param.device, dtype=param.dtype)
        if opts.num_task_prompts:
            for block in [m for m in unet.modules() if isinstance(m, AttentionBlock)]:
                block.task_prompt = TaskPromptAttention(block.qkv.in_channels, opts.embed_dim, block.num_heads).to(
                    device=param.device, dtype=param.dtype)
        log.info("layout adaptor: %d layout-attention blocks (%s), %d adaptor parameters",
                 len(chosen), ", ".join(chosen), sum(p.numel() for n, p in unet.named_parameters() if is_adaptor_name(n)))
        return adaptor


def is_adaptor_name(name: str) -> bool:
    """True for parameter / state-dict names that belong to the adaptor (``adaptor.*``, ``*.task_prompt.*``)."""
    return name.startswith("adaptor.") or "task_prompt" in name.split(".")
