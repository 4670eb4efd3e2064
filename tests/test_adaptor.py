"""Adapting a foundation UNet: exact identity at the start, key bookkeeping, training modes."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from layoutdiffuse.adapt import adapt, adaptor_parameter_names, load_foundation_state, param_groups
from layoutdiffuse.diffusion.guidance import conditioned
from layoutdiffuse.layout import LayoutError, cat_layouts, pad_layouts
from layoutdiffuse.nn import adaptor as adaptor_module
from layoutdiffuse.nn.adaptor import LayoutAdaptor, LayoutAttention, TaskPromptAttention, is_adaptor_name
from layoutdiffuse.nn.blocks import AttentionBlock
from layoutdiffuse.nn.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (tests/conftest.py)

NUM_CLASSES = 5
CONFIG = dict(in_channel=3, out_channel=3, base_channel=16, channel_mult=(1, 2, 2), num_res_blocks=1,
              attn_levels=(1, 2), num_heads=2)


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every weight random (zero-initialised output layers too), so equalities are not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture(scope="module")
def foundation() -> UNet:
    torch.manual_seed(0)
    return randomized(UNet(**CONFIG)).eval()


def random_boxes(b: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    layouts = []
    for i in range(b):
        n = i % 4  # 0..3 objects: padded batch with an empty layout in it
        wh = 0.05 + 0.6 * torch.rand(n, 2, generator=g)
        xy = torch.rand(n, 2, generator=g) * (1 - wh)
        layouts.append(torch.cat([xy, wh, torch.randint(0, NUM_CLASSES, (n, 1), generator=g).float()], 1))
    return pad_layouts(layouts)


def random_mask(b: int, size: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, NUM_CLASSES, (b, size, size), generator=g)
    mask[torch.rand(mask.shape, generator=g) < 0.2] = 255
    return mask


def inputs(b: int = 4, size: int = 16, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, size, size, generator=g), torch.randint(0, 1000, (b,), generator=g)


def count_calls(model: UNet) -> list[str]:
    called: list[str] = []
    for key, block in model.adaptor.blocks.items():
        block.register_forward_hook(lambda m, i, o, key=key: called.append(key))
    for name, m in model.named_modules():
        if isinstance(m, TaskPromptAttention):
            m.register_forward_hook(lambda mod, i, o, name=name: called.append(name))
    return called


# ---------------------------------------------------------------------------------------------
# Identity at the start
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout_cfg,cond_kind", [
    ({"num_classes": NUM_CLASSES}, "boxes"),
    ({"num_classes": NUM_CLASSES, "num_heads": 2, "levels": [0, 1, 2]}, "boxes"),
    ({"num_classes": NUM_CLASSES, "mask": True}, "mask"),
    ({"num_classes": NUM_CLASSES, "mask": True, "region_mask_attention": True}, "mask"),
])
def test_adapted_model_equals_foundation_exactly(foundation, layout_cfg, cond_kind):
    model = adapt(foundation, layout_cfg).eval()
    called = count_calls(model)
    x, t = inputs()
    cond = {"layout": random_boxes(4)} if cond_kind == "boxes" else {"mask": random_mask(4, 16)}
    with torch.no_grad():
        expected = foundation(x, t)
        assert torch.equal(model(x, t, cond), expected)
        assert torch.equal(model(x, t, None), expected)
    assert set(model.adaptor.blocks) <= set(called)  # every layout-attention block ran
    assert any("task_prompt" in c for c in called)  # and the task prompts did


def test_adaptor_changes_the_output_once_trained(foundation):
    model = adapt(foundation, {"num_classes": NUM_CLASSES})
    randomized(model.adaptor, seed=5)
    x, t = inputs()
    with torch.no_grad():
        a = model(x, t, {"layout": random_boxes(4)})
        b = model(x, t, {"layout": torch.zeros(4, 0, 5)})
    assert (a - b).abs().max() > 1e-4  # the layout matters
    assert (b - foundation(x, t)).abs().max() > 1e-4  # the task prompts matter


def test_task_prompt_gate_keeps_identity_and_moves_away():
    block = randomized(AttentionBlock(16, num_heads=2))
    x = torch.randn(2, 16, 4, 4)
    plain = block(x)
    block.task_prompt = TaskPromptAttention(16, 8, 2)
    tokens = torch.randn(3, 8)
    assert torch.equal(block(x, {"task_prompts": tokens}), plain)  # gate 0: exact
    with torch.no_grad():
        block.task_prompt.gate.fill_(0.5)
    assert not torch.allclose(block(x, {"task_prompts": tokens}), plain)
    assert torch.equal(block(x, None), plain)  # no tokens in cond: untouched


def test_adaptor_gets_gradients_from_the_start(foundation):
    model = adapt(foundation, {"num_classes": NUM_CLASSES})
    x, t = inputs()
    model(x, t, {"layout": random_boxes(4)}).square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(grads[f"adaptor.blocks.{k}.proj_out.weight"].abs().sum() > 0 for k in model.adaptor.blocks)
    gates = [n for n in grads if n.endswith("task_prompt.gate")]
    assert gates and all(grads[n].abs().sum() > 0 for n in gates)


# ---------------------------------------------------------------------------------------------
# Keys and parameters
# ---------------------------------------------------------------------------------------------

def test_foundation_keys_unchanged_and_only_adaptor_keys_new(foundation):
    model = adapt(foundation, {"num_classes": NUM_CLASSES, "levels": [0, 1]})
    old, new = foundation.state_dict(), model.state_dict()
    assert set(old) <= set(new)
    assert all(torch.equal(old[k], new[k]) for k in old)
    added = set(new) - set(old)
    assert added and all(is_adaptor_name(k) for k in added)
    assert set(adaptor_parameter_names(model)) == {n for n, _ in model.named_parameters() if n not in old}
    assert not adaptor_parameter_names(foundation)
    assert "adaptor.prompt_table.weight" in added and "adaptor.task_prompts" in added
    assert model.adaptor.prompt_table.weight.shape == (NUM_CLASSES + 1, 128)


def test_layout_attention_placement(foundation):
    model = adapt(foundation, {"num_classes": NUM_CLASSES, "levels": [0]})
    keys = set(model.adaptor.blocks)
    info = model.block_info
    assert keys == {k for k, (lvl, _) in info.items() if lvl == 0 and k != "input_0"}
    assert all(model.adaptor.blocks[k].channels == info[k][1] for k in keys)
    model = adapt(foundation, {"num_classes": NUM_CLASSES, "levels": [1, 2]})
    downsample_only = {f"input_{i}" for i, blk in enumerate(model.input_blocks) if type(blk[0]).__name__ == "Downsample"}
    assert downsample_only and not downsample_only & set(model.adaptor.blocks)
    assert "middle" in model.adaptor.blocks
    n_attn = sum(isinstance(m, AttentionBlock) for m in model.modules())
    assert n_attn and sum(isinstance(m, TaskPromptAttention) for m in model.modules()) == n_attn


def test_no_task_prompts_option(foundation):
    model = adapt(foundation, {"num_classes": NUM_CLASSES, "num_task_prompts": 0})
    assert not any("task_prompt" in n for n, _ in model.named_parameters())


def test_missing_and_unexpected_keys_are_listed(foundation):
    model = UNet(**CONFIG, layout={"num_classes": NUM_CLASSES})
    state = foundation.state_dict()
    broken = {k: v for k, v in state.items() if k != "out.2.weight"}
    with pytest.raises(KeyError, match=r"1 missing foundation keys \[out\.2\.weight\]"):
        load_foundation_state(model, broken)
    extra = dict(state, **{"not_a_layer.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"1 unexpected foundation keys \[not_a_layer\.weight\]"):
        load_foundation_state(model, extra)
    reshaped = dict(state, **{"out.2.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"1 keys with another shape .*out\.2\.weight: \(1,\)"):
        load_foundation_state(model, reshaped)
    with pytest.raises(KeyError, match="already holds adaptor keys"):
        load_foundation_state(model, model.state_dict())
    load_foundation_state(model, state)  # the good case loads


def test_adapt_refuses_an_adapted_model(foundation):
    model = adapt(foundation, {"num_classes": NUM_CLASSES})
    with pytest.raises(ValueError, match="already has a layout adaptor"):
        adapt(model, {"num_classes": NUM_CLASSES})


def test_bad_adaptor_config_errors():
    with pytest.raises(ValueError, match="levels \\[5\\] out of range"):
        UNet(**CONFIG, layout={"num_classes": 3, "levels": [5]})
    with pytest.raises(ValueError, match="missing .layout.num_classes."):
        UNet(**CONFIG, layout={"levels": [0]})


# ---------------------------------------------------------------------------------------------
# Layout checks at the model's entrance
# ---------------------------------------------------------------------------------------------

def test_class_out_of_range_and_batch_mismatch(foundation):
    model = adapt(foundation, {"num_classes": NUM_CLASSES})
    x, t = inputs(2)
    bad = torch.tensor([[[0.1, 0.1, 0.3, 0.3, NUM_CLASSES]], [[0.1, 0.1, 0.3, 0.3, 0]]])
    with pytest.raises(LayoutError, match=rf"image 0, object 0: .* must be an integer class in \[0, {NUM_CLASSES}\)"):
        conditioned(model, {"layout": bad})  # checked once where the model function is made, not per forward
    with pytest.raises(LayoutError, match=r"shape \(2, N, 5\)"):
        model(x, t, {"layout": random_boxes(3)})


def test_guidance_batch_of_cond_and_empty_layouts(foundation):
    """Both CFG branches in one batch give what each gives alone."""
    model = adapt(foundation, {"num_classes": NUM_CLASSES})
    randomized(model.adaptor, seed=7)
    x, t = inputs(2)
    layout = random_boxes(4)[2:]  # objects 2 and 3
    with torch.no_grad():
        both = model(torch.cat([x, x]), torch.cat([t, t]), {"layout": cat_layouts([layout, torch.zeros(2, 0, 5)])})
        cond = model(x, t, {"layout": layout})
        uncond = model(x, t, None)
    torch.testing.assert_close(both[:2], cond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[2:], uncond, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Training modes
# ---------------------------------------------------------------------------------------------

def test_freeze_backbone_leaves_backbone_bit_identical(foundation):
    model = adapt(foundation, {"num_classes": NUM_CLASSES})
    groups = param_groups(model, "freeze_backbone", adaptor_lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(groups, weight_decay=0.1)
    x, t = inputs()
    for _ in range(2):
        opt.zero_grad()
        model(x, t, {"layout": random_boxes(4)}).square().mean().backward()
        opt.step()
    after = model.state_dict()
    adaptor = set(adaptor_parameter_names(model))
    assert all(torch.equal(before[k], after[k]) for k in before if k not in adaptor)
    assert any(not torch.equal(before[k], after[k]) for k in adaptor)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in adaptor)


def test_param_group_modes(foundation):
    model = adapt(foundation, {"num_classes": NUM_CLASSES})
    n_all = sum(1 for _ in model.parameters())
    g = param_groups(model, "all", lr=3e-5)
    assert len(g) == 1 and len(g[0]["params"]) == n_all and g[0]["lr"] == 3e-5
    g = param_groups(model, "separate", lr=3e-5, adaptor_lr=1e-4)
    assert [x["name"] for x in g] == ["backbone", "adaptor"] and [x["lr"] for x in g] == [3e-5, 1e-4]
    assert sum(len(x["params"]) for x in g) == n_all
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="needs adaptor_lr"):
        param_groups(model, "separate")
    with pytest.raises(ValueError, match="unknown param_groups mode 'frozen'; choose one of: all, freeze_backbone, separate"):
        param_groups(model, "frozen")


def test_prepare_fills_empty_layout_and_shares_table():
    adaptor = LayoutAdaptor({"input_1": 16}, NUM_CLASSES, embed_dim=8, num_task_prompts=4)
    state = adaptor.prepare(None, 3)
    assert state.layout.shape == (3, 0, 5) and state.regions == {}
    assert state.prompt_table is adaptor.prompt_table.weight and state.task_prompts.shape == (4, 8)
    user = {"layout": random_boxes(3)}
    assert adaptor.prepare(user, 3).layout is user["layout"]
    assert set(user) == {"layout"}  # the caller's dict is not modified
    assert isinstance(adaptor.blocks["input_1"], LayoutAttention) and adaptor.blocks["input_1"].prompt_table is None


def test_region_cache_shared_across_blocks_changes_nothing(foundation, monkeypatch):
    model = adapt(foundation, {"num_classes": NUM_CLASSES, "levels": [0, 1, 2], "num_heads": 2})
    randomized(model.adaptor, seed=9)
    x, t = inputs()
    cond = {"layout": random_boxes(4)}
    built = []
    build = adaptor_module.build_regions
    monkeypatch.setattr(adaptor_module, "build_regions", lambda *a, **k: built.append(1) or build(*a, **k))
    with torch.no_grad():
        cached = model(x, t, cond)
        assert len(built) == 3 < len(model.adaptor.blocks)  # once per resolution (16, 8, 4)
        prepare = LayoutAdaptor.prepare

        class NoCache(dict):
            def __setitem__(self, key, value):
                pass

        monkeypatch.setattr(LayoutAdaptor, "prepare", lambda self, c, b: dataclasses.replace(prepare(self, c, b), regions=NoCache()))
        uncached = model(x, t, cond)
    assert len(built) == 3 + len(model.adaptor.blocks)
    torch.testing.assert_close(cached, uncached, atol=1e-5, rtol=1e-5)
