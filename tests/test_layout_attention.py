"""Layout attention against a deliberately naive per-object loop written from docs/method.md §3.

The naive functions (``naive_*``, :mod:`layoutdiffuse.nn.reference`) are the reference; they loop
over batch items, objects and heads and index cells one region at a time.
"""
from __future__ import annotations

import pytest
import torch

from layoutdiffuse.conditions import check_condition
from layoutdiffuse.layout import LayoutError, pad_layouts
from layoutdiffuse.nn import adaptor as adaptor_mod
from layoutdiffuse.nn.adaptor import (LayoutAttention, box_prompt_map, mask_prompt_map, rasterize_boxes,
                                      subsample_mask)
from layoutdiffuse.nn.reference import naive_box_prompt_map, naive_layout_attention, naive_rect

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (tests/conftest.py)

NUM_CLASSES = 6
EMBED = 8


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def make_block(channels: int = 16, heads: int = 1, **kw) -> tuple[LayoutAttention, torch.nn.Parameter]:
    torch.manual_seed(0)
    block = LayoutAttention(channels, EMBED, heads, **kw)
    torch.nn.init.normal_(block.proj_out.weight, std=0.3)  # zero at init; random to see the branches
    torch.nn.init.normal_(block.proj_out.bias, std=0.3)
    torch.nn.init.normal_(block.norm.weight, 1.0, 0.2)
    table = torch.nn.Parameter(torch.randn(NUM_CLASSES + 1, EMBED))
    return block, table


def random_layouts(counts: list[int], seed: int = 0, min_size: float = 0.02) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    layouts = []
    for n in counts:
        wh = min_size + (1 - min_size) * torch.rand(n, 2, generator=g) ** 2
        xy = torch.rand(n, 2, generator=g) * (1 - wh)
        cls = torch.randint(0, NUM_CLASSES, (n, 1), generator=g).float()
        layouts.append(torch.cat([xy, wh, cls], 1))
    return pad_layouts(layouts)


def assert_same(block: LayoutAttention, table: torch.nn.Parameter, x: torch.Tensor, cond, naive_kw: dict, tol: float = 1e-5):
    """Outputs and gradients (x, every block parameter, the prompt table) of the block vs the naive loop."""
    params = [table] + list(block.parameters())
    x1 = x.clone().requires_grad_(True)
    full = dict(cond or {}, prompt_table=table) if cond is not None else {"prompt_table": table}
    y1 = block(x1, full)
    g_out = torch.randn_like(y1)
    grads1 = torch.autograd.grad(y1, [x1] + params, g_out)
    x2 = x.clone().requires_grad_(True)
    y2 = naive_layout_attention(block, x2, table, **naive_kw)
    grads2 = torch.autograd.grad(y2, [x2] + params, g_out, allow_unused=True)
    torch.testing.assert_close(y1, y2, atol=tol, rtol=tol)
    names = ["x", "prompt_table"] + [n for n, _ in block.named_parameters()]
    for name, a, b in zip(names, grads1, grads2):
        b = torch.zeros_like(a) if b is None else b
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=lambda m: f"gradient of {name}: {m}")
    return y1


# ---------------------------------------------------------------------------------------------
# Rasterisation
# ---------------------------------------------------------------------------------------------

def test_rasterize_closed_form():
    layout = torch.tensor([[[0.0, 0.0, 1.0, 1.0, 0],      # whole image
                            [0.25, 0.5, 0.5, 0.25, 1],    # rows 4:6, cols 2:6 at 8x8
                            [0.999, 0.999, 0.001, 0.001, 2],  # one cell, bottom-right
                            [0.9, 0.1, 0.5, 0.2, 3],      # leaves the image: clipped
                            [0.3, 0.3, 0.3, 0.3, -1]]])   # padding
    m = rasterize_boxes(layout, 8, 8)
    assert m.shape == (1, 5, 8, 8) and m.dtype == torch.bool
    assert m[0, 0].all()
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[4:6, 2:6] = True
    assert torch.equal(m[0, 1], expected)
    assert m[0, 2].sum() == 1 and m[0, 2, 7, 7]
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:2, 7:8] = True  # floor(0.8)=0 .. +ceil(1.6)=2 rows; col 7 .. clipped at 8
    assert torch.equal(m[0, 3], expected)
    assert not m[0, 4].any()


@pytest.mark.parametrize("hw", [(1, 1), (4, 4), (8, 8), (16, 16), (4, 8), (7, 5)])
def test_rasterize_matches_rule_and_covers_one_cell(hw):
    h, w = hw
    layout = random_layouts([7, 3, 0], seed=1, min_size=0.001)
    m = rasterize_boxes(layout, h, w)
    for b in range(layout.shape[0]):
        for n in range(layout.shape[1]):
            expected = torch.zeros(h, w, dtype=torch.bool)
            if layout[b, n, 4] >= 0:
                r0, r1, c0, c1 = naive_rect(layout[b, n], h, w)
                expected[r0:r1, c0:c1] = True
                assert m[b, n].sum() >= 1  # every box covers at least one cell at every level
            assert torch.equal(m[b, n], expected), (b, n, layout[b, n])


def test_rasterize_tiny_box_at_every_level():
    layout = torch.tensor([[[0.5, 0.5, 1e-4, 1e-4, 0]]])
    for s in (1, 2, 4, 8, 16, 32, 64):
        m = rasterize_boxes(layout, s, s)
        assert m.sum() == 1 and m[0, 0, min(s - 1, s // 2), min(s - 1, s // 2)]


# ---------------------------------------------------------------------------------------------
# Instance prompts
# ---------------------------------------------------------------------------------------------

def test_box_prompt_map_mean_of_covering_and_null():
    table = torch.eye(4)  # rows: class 0, 1, 2, null
    layout = torch.tensor([[[0.0, 0.0, 0.5, 0.5, 0], [0.25, 0.25, 0.5, 0.5, 1], [0.0, 0.0, 0.25, 0.25, 2]],
                           [[0.0, 0.0, 0.0, 0.0, -1], [0.0, 0.0, 0.0, 0.0, -1], [0.0, 0.0, 0.0, 0.0, -1]]])
    p = box_prompt_map(layout, table, 4, 4)
    assert p.shape == (2, 4, 4, 4)
    torch.testing.assert_close(p[0, :, 0, 0], torch.tensor([0.5, 0.0, 0.5, 0.0]))  # boxes 0 and 2
    torch.testing.assert_close(p[0, :, 1, 1], torch.tensor([0.5, 0.5, 0.0, 0.0]))  # boxes 0 and 1
    torch.testing.assert_close(p[0, :, 2, 2], torch.tensor([0.0, 1.0, 0.0, 0.0]))  # box 1 only
    torch.testing.assert_close(p[0, :, 3, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]))  # null
    assert torch.equal(p[1], table[-1][:, None, None].expand(4, 4, 4))  # all padding -> null


def test_box_prompt_map_matches_naive():
    table = torch.randn(NUM_CLASSES + 1, EMBED)
    layout = random_layouts([5, 0, 8], seed=3)
    p = box_prompt_map(layout, table, 8, 6)
    for b in range(3):
        torch.testing.assert_close(p[b], naive_box_prompt_map(layout[b], table, 8, 6))


def test_mask_prompt_map_subsamples_and_maps_ignore_to_null():
    table = torch.randn(NUM_CLASSES + 1, EMBED)
    mask = torch.randint(0, NUM_CLASSES, (2, 16, 16))
    mask[0, :8] = 255
    p = mask_prompt_map(mask, table, 8, 8)
    assert p.shape == (2, EMBED, 8, 8)
    strided = mask[:, ::2, ::2]
    assert torch.equal(subsample_mask(mask, 8, 8), strided)
    idx = torch.where(strided == 255, NUM_CLASSES, strided)
    assert torch.equal(p, table[idx].permute(0, 3, 1, 2))
    assert torch.equal(p[0, :, 0, 0], table[-1])


def test_class_out_of_range_is_a_clear_error():
    table = torch.randn(NUM_CLASSES + 1, EMBED)
    layout = torch.tensor([[[0.0, 0.0, 0.5, 0.5, NUM_CLASSES]]])
    with pytest.raises(LayoutError, match=rf"\[{NUM_CLASSES}\] outside \[0, {NUM_CLASSES}\)"):
        box_prompt_map(layout, table, 4, 4)
    with pytest.raises(LayoutError, match="outside"):
        mask_prompt_map(torch.full((1, 4, 4), 7), table, 4, 4)
    # a block trusts its input; the boundary check (collate, the sampling / training model functions) refuses it
    with pytest.raises(LayoutError, match=rf"image 0, object 0: field 'class' must be an integer class in \[0, {NUM_CLASSES}\)"):
        check_condition({"layout": layout}, classes={"layout": NUM_CLASSES})
    with pytest.raises(LayoutError, match=r"mask layout has class ids \[7\]; allowed: class ids in \[0, 5\)"):
        check_condition({"mask": torch.full((1, 4, 4), 7)}, classes={"mask": 5})


def test_block_without_table_says_where_it_comes_from():
    block = LayoutAttention(16, EMBED)
    with pytest.raises(KeyError, match="prompt_table"):
        block(torch.randn(1, 16, 4, 4), None)


# ---------------------------------------------------------------------------------------------
# Layout attention vs the naive loop: outputs and gradients
# ---------------------------------------------------------------------------------------------

CASES = {
    "zero_objects": torch.zeros(2, 0, 5),
    "all_padding": pad_layouts([torch.zeros(0, 5), torch.zeros(0, 5)], length=3),
    "overlapping": torch.tensor([[[0.0, 0.0, 0.6, 0.6, 0], [0.3, 0.3, 0.6, 0.6, 1], [0.2, 0.1, 0.3, 0.8, 2]],
                                 [[0.1, 0.1, 0.8, 0.8, 3], [0.1, 0.1, 0.8, 0.8, 3], [0.4, 0.4, 0.2, 0.2, 4]]]),
    "one_cell": torch.tensor([[[0.5, 0.5, 0.01, 0.01, 0], [0.0, 0.0, 0.001, 0.001, 1], [0.5, 0.5, 0.01, 0.01, 2]],
                              [[0.9, 0.2, 0.05, 0.05, 5], [0.2, 0.9, 0.02, 0.09, 1], [0.0, 0.0, 0.0, 0.0, -1]]]),
    "border": torch.tensor([[[0.9, 0.9, 0.1, 0.1, 0], [0.0, 0.95, 1.0, 0.05, 1], [0.999, 0.0, 0.001, 1.0, 2]],
                            [[0.0, 0.0, 1.0, 1.0, 3], [0.75, 0.0, 0.25, 0.25, 4], [0.0, 0.0, 0.0, 0.0, -1]]]),
    "padded_batch": random_layouts([5, 0, 2, 8], seed=2),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("heads", [1, 2])
def test_box_layout_attention_matches_naive(case, heads):
    block, table = make_block(16, heads)
    layout = CASES[case]
    x = torch.randn(layout.shape[0], 16, 8, 8)
    assert_same(block, table, x, {"layout": layout}, {"layout": layout})


@pytest.mark.parametrize("overhead", [0.0, 1e12])  # a bucket per distinct size / one bucket for all
@pytest.mark.parametrize("hw", [(8, 8), (6, 10)])
def test_bucketing_does_not_change_the_result(monkeypatch, overhead, hw):
    monkeypatch.setitem(adaptor_mod.BUCKET_OVERHEAD, "cpu", overhead)
    block, table = make_block(16, 4)
    layout = random_layouts([8, 1, 6, 3], seed=5, min_size=0.05)
    x = torch.randn(4, 16, *hw)
    assert_same(block, table, x, {"layout": layout}, {"layout": layout})


def test_several_buckets_are_used():
    cover = rasterize_boxes(random_layouts([8, 8, 8, 8], seed=6), 16, 16)
    regions = adaptor_mod.build_regions(cover, torch.zeros(4, 8, dtype=torch.long), 16, overhead=0.0)
    assert len(regions.instance) > 1
    sizes = cover.flatten(2).sum(-1)
    assert sum(b.gather.shape[0] for b in regions.instance) == int((sizes > 0).sum())
    regions = adaptor_mod.build_regions(cover, torch.zeros(4, 8, dtype=torch.long), 16, overhead=1e12)
    assert len(regions.instance) == 1 and regions.instance[0].gather.shape[1] == int(sizes.max())


def test_none_and_missing_layout_act_as_empty():
    block, table = make_block(16, 2)
    x = torch.randn(2, 16, 4, 4)
    empty = block(x, {"prompt_table": table, "layout": torch.zeros(2, 0, 5)})
    assert torch.equal(block(x, {"prompt_table": table}), empty)
    own = LayoutAttention(16, EMBED, 2, num_classes=NUM_CLASSES)
    own.load_state_dict(block.state_dict() | {"prompt_table.weight": table.detach()})
    assert torch.equal(own(x, None), empty)
    expected = naive_layout_attention(block, x, table, layout=torch.zeros(2, 0, 5))
    torch.testing.assert_close(empty, expected, atol=1e-5, rtol=1e-5)


def test_fresh_block_is_identity():
    block = LayoutAttention(16, EMBED, 2, num_classes=NUM_CLASSES)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(block(x, {"layout": CASES["overlapping"]}), x)


def test_layout_changes_the_output():
    block, table = make_block(16, 1)
    x = torch.randn(2, 16, 8, 8)
    a = block(x, {"layout": CASES["overlapping"], "prompt_table": table})
    b = block(x, {"layout": torch.zeros(2, 0, 5), "prompt_table": table})
    assert (a - b).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Mask layouts
# ---------------------------------------------------------------------------------------------

def random_mask(b: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, NUM_CLASSES - 2, (b, 4, 4), generator=g)  # some classes absent
    mask = coarse.repeat_interleave(size // 4, 1).repeat_interleave(size // 4, 2)
    mask[torch.rand(mask.shape, generator=g) < 0.1] = 255
    mask[0, : size // 2, : size // 2] = 255
    return mask


@pytest.mark.parametrize("heads", [1, 2])
def test_mask_global_attention_matches_naive(heads):
    block, table = make_block(16, heads, mask=True)
    mask = random_mask(2, 16)
    x = torch.randn(2, 16, 8, 8)
    assert_same(block, table, x, {"mask": mask}, {"mask": mask})


@pytest.mark.parametrize("heads", [1, 2])
def test_mask_region_attention_matches_naive(heads):
    block, table = make_block(16, heads, mask=True, region_mask_attention=True)
    mask = random_mask(3, 16, seed=1)
    mask[2] = 255  # an image with nothing but ignore
    x = torch.randn(3, 16, 8, 8)
    assert_same(block, table, x, {"mask": mask}, {"mask": mask, "region": True})


def test_missing_mask_is_all_null():
    block, table = make_block(16, 1, mask=True)
    x = torch.randn(2, 16, 4, 4)
    ignore = torch.full((2, 8, 8), 255)
    assert torch.equal(block(x, {"prompt_table": table}), block(x, {"prompt_table": table, "mask": ignore}))


def test_region_mask_needs_mask_mode():
    with pytest.raises(ValueError, match="mask=True"):
        LayoutAttention(16, EMBED, region_mask_attention=True)
