"""The LayoutDiffuse adaptor inside diffusers UNets (Stable Diffusion, LDM): exact identity at
insertion, unchanged pretrained names, the prompt branch against a naive version, state dicts."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from tiny_sd import CONTEXT_DIM, MAX_LEN, SD_ARCHITECTURES, box_layouts, masks, perturbed, tiny_ldm, tiny_sd

from layoutdiffuse.adapt import param_groups
from layoutdiffuse.nn.adaptor import is_adaptor_name
from layoutdiffuse.sd.layout_unet import LayoutDiffusersUNet, layout_sites, state_dict_mismatch

NUM_CLASSES = 5
SD_LAYOUT = {"num_classes": NUM_CLASSES, "levels": [0, 1], "embed_dim": 8, "num_task_prompts": 4, "num_heads": 2}
LDM_LAYOUT = {"num_classes": NUM_CLASSES, "levels": [1, 2], "embed_dim": 8, "num_task_prompts": 4, "mask": True}
pytestmark = pytest.mark.usefixtures("one_thread")


def sd_inputs(b: int = 4, size: int = 8, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, size, size, generator=g), torch.tensor([0, 10, 500, 999][:b]),
            torch.randn(b, MAX_LEN, CONTEXT_DIM, generator=g))


@pytest.fixture(scope="module")
def sd_pair():
    unet = tiny_sd()["unet"]
    foundation = copy.deepcopy(unet)
    return foundation, LayoutDiffusersUNet(unet, SD_LAYOUT, foundation="stable_diffusion").eval()


@pytest.fixture(scope="module")
def ldm_pair():
    unet = tiny_ldm()["unet"]
    foundation = copy.deepcopy(unet)
    return foundation, LayoutDiffusersUNet(unet, LDM_LAYOUT, foundation="ldm").eval()


# --- identity at insertion ------------------------------------------------------------------------

@pytest.mark.parametrize("checkpointing", [False, True])
def test_text_unet_identity_is_exact(sd_pair, checkpointing):
    foundation, model = sd_pair
    x, t, ctx = sd_inputs()
    layout = box_layouts(4, NUM_CLASSES)
    model = copy.deepcopy(model).train()
    foundation = copy.deepcopy(foundation).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
        foundation.enable_gradient_checkpointing()
    out = model(x, t, {"context": ctx, "layout": layout})
    ref = foundation(x, t, encoder_hidden_states=ctx).sample
    assert torch.equal(out, ref)
    out.square().mean().backward()  # and it trains (the gates receive a gradient at once)
    gates = [p.grad for n, p in model.named_parameters() if n.endswith(".gate")]
    assert gates and all(g is not None and g.abs().sum() > 0 for g in gates)


def test_unconditional_unet_identity_is_exact(ldm_pair):
    foundation, model = ldm_pair
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 3, 8, 8, generator=g), torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        ref = foundation(x, t).sample
        assert torch.equal(model(x, t, {"mask": masks(4, 32, NUM_CLASSES)}), ref)
        assert torch.equal(model(x, t, None), ref)  # no layout = the all-ignore mask
    boxes = LayoutDiffusersUNet(copy.deepcopy(foundation), {**LDM_LAYOUT, "mask": False}).eval()
    with torch.no_grad():
        assert torch.equal(boxes(x, t, {"layout": box_layouts(4, NUM_CLASSES)}), ref)


def test_adaptor_changes_the_output_once_trained(sd_pair, ldm_pair):
    foundation, model = sd_pair
    live = perturbed(model)
    x, t, ctx = sd_inputs()
    layout = box_layouts(4, NUM_CLASSES)
    with torch.no_grad():
        ref = foundation(x, t, encoder_hidden_states=ctx).sample
        a = live(x, t, {"context": ctx, "layout": layout})
        b = live(x, t, {"context": ctx, "layout": box_layouts(4, NUM_CLASSES, seed=9)})
    assert not torch.allclose(a, ref) and not torch.allclose(a[1:], b[1:])  # item 0 has the empty layout in both
    foundation, model = ldm_pair
    live = perturbed(model)
    with torch.no_grad():
        x = torch.randn(4, 3, 8, 8)
        a = live(x, t, {"mask": masks(4, 32, NUM_CLASSES)})
        b = live(x, t, {"mask": masks(4, 32, NUM_CLASSES, seed=7)})
    assert not torch.allclose(a, b) and not torch.allclose(a, foundation(x, t).sample)


def test_cross_attention_prompt_branch_matches_naive_version(sd_pair):
    """a = to_out(softmax(q k_text^T) v_text + gate * softmax(q k_prompt^T) v_prompt), with k/v from the
    layer's own pretrained to_k/to_v and the prompts the last T context tokens."""
    model = perturbed(sd_pair[1])
    attn = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    gate = model.task_prompt["down_blocks_0_attentions_0_transformer_blocks_0_attn2"].gate
    g = torch.Generator().manual_seed(1)
    h, ctx, prompts = torch.randn(2, 64, 16, generator=g), torch.randn(2, MAX_LEN, CONTEXT_DIM, generator=g), torch.randn(2, 4, CONTEXT_DIM, generator=g)
    with torch.no_grad():
        out = attn(h, encoder_hidden_states=torch.cat([ctx, prompts], 1))
        heads = attn.heads

        def split(t):
            return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

        q = split(attn.to_q(h))
        text = F.softmax(q @ split(attn.to_k(ctx)).transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ split(attn.to_v(ctx))
        prompt = F.softmax(q @ split(attn.to_k(prompts)).transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ split(attn.to_v(prompts))
        a = text + gate[None, :, None, None] * prompt
        naive = attn.to_out[0](a.transpose(1, 2).reshape(2, 64, -1))
    torch.testing.assert_close(out, naive, atol=1e-5, rtol=1e-5)


def test_context_gets_projected_prompts_appended(sd_pair):
    model = perturbed(sd_pair[1])
    seen = {}
    attn = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    attn.register_forward_pre_hook(lambda m, args, kwargs: seen.update(ctx=kwargs["encoder_hidden_states"]), with_kwargs=True)
    x, t, ctx = sd_inputs(2)
    with torch.no_grad():
        model(x, t, {"context": ctx})
        expected = model.task_prompt["context"](model.adaptor.task_prompts)
    assert seen["ctx"].shape == (2, MAX_LEN + 4, CONTEXT_DIM)
    assert torch.equal(seen["ctx"][:, :MAX_LEN], ctx) and torch.equal(seen["ctx"][1, MAX_LEN:], expected)
    assert model.task_prompt["context"].bias is None


# --- names, state dicts, copies -------------------------------------------------------------------

def test_pretrained_names_are_unchanged(sd_pair, ldm_pair):
    for foundation, model in (sd_pair, ldm_pair):
        own = foundation.state_dict()
        adapted = model.state_dict()
        assert {k[len("unet."):] for k in adapted if k.startswith("unet.")} == set(own)
        assert all(torch.equal(adapted["unet." + k], v) for k, v in own.items())
        new = [k for k in adapted if not k.startswith("unet.")]
        assert new and all(is_adaptor_name(k) for k in new)
    groups = param_groups(copy.deepcopy(sd_pair[1]), "freeze_backbone", lr=1e-4)
    assert [g["name"] for g in groups] == ["adaptor"]


def test_layout_sites_follow_the_levels():
    unet = tiny_sd()["unet"]
    sites = layout_sites(unet, [0])
    assert set(sites) == {"down_blocks_0_attentions_0", "up_blocks_2_attentions_0", "up_blocks_2_attentions_1"}
    assert set(layout_sites(unet, [2])) == {"down_blocks_2_resnets_0", "mid_block_attentions_0"} | {f"up_blocks_0_resnets_{j}" for j in range(2)}
    with pytest.raises(ValueError, match=r"levels \[3\] out of range.*0\.\.2"):
        layout_sites(unet, [3])


def test_state_dict_round_trip(sd_pair, ldm_pair):
    x, t, ctx = sd_inputs()
    cases = ((sd_pair[1], {"context": ctx, "layout": box_layouts(4, NUM_CLASSES)}, x),
             (ldm_pair[1], {"mask": masks(4, 16, NUM_CLASSES)}, torch.randn(4, 3, 8, 8)))
    for model, cond, inp in cases:
        live = perturbed(model)
        config = json.loads(json.dumps(live.config))  # plain data, as checkpoints store it
        rebuilt = LayoutDiffusersUNet.from_config(config).eval()
        rebuilt.load_state_dict(live.state_dict())
        with torch.no_grad():
            assert torch.equal(rebuilt(inp, t, cond), live(inp, t, cond))


def test_mismatched_state_dict_is_reported_by_key(sd_pair):
    model = copy.deepcopy(sd_pair[1])
    sd = model.state_dict()
    sd.pop("unet.conv_in.weight")
    sd.pop("adaptor.prompt_table.weight")
    sd["unet.extra.weight"] = torch.zeros(1)
    sd["task_prompt.context.weight"] = torch.zeros(3, 3)
    with pytest.raises(KeyError) as err:
        model.load_state_dict(sd)
    msg = str(err.value)
    assert "1 missing foundation keys [unet.conv_in.weight]" in msg
    assert "1 missing adaptor keys [adaptor.prompt_table.weight]" in msg
    assert "1 unexpected foundation keys [unet.extra.weight]" in msg
    assert "task_prompt.context.weight: (3, 3) vs (32, 8)" in msg
    assert state_dict_mismatch(model, model.state_dict()) == ""


def test_deep_copy_owns_its_processors_and_hooks(sd_pair):
    """EMA keeps a deep copy: its processors and hooks must use the copy's adaptor, not the live one."""
    model = perturbed(sd_pair[1])
    ema = copy.deepcopy(model)
    attn = ema.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert attn.processor.module is ema.task_prompt["down_blocks_0_attentions_0_transformer_blocks_0_attn2"]
    x, t, ctx = sd_inputs()
    cond = {"context": ctx, "layout": box_layouts(4, NUM_CLASSES)}
    with torch.no_grad():
        before = model(x, t, cond)
        for name, p in ema.named_parameters():
            if is_adaptor_name(name):
                p.zero_()
        assert torch.equal(model(x, t, cond), before)
        assert not torch.allclose(ema(x, t, cond), before)


# --- errors -----------------------------------------------------------------------------------------

def test_clear_errors(sd_pair):
    model = sd_pair[1]
    x, t, ctx = sd_inputs(2)
    with pytest.raises(ValueError, match=r"cond\['context'\]"):
        model(x, t, {"layout": box_layouts(2, NUM_CLASSES)})
    with pytest.raises(RuntimeError, match="outside LayoutDiffusersUNet.forward"):
        model.unet(x, t, encoder_hidden_states=torch.cat([ctx, ctx[:, :4]], 1))
    with pytest.raises(ValueError, match="unknown config key 'layout.level'; allowed keys: .*mid_block"):
        LayoutDiffusersUNet(tiny_sd()["unet"], {**SD_LAYOUT, "level": [1]})
    with pytest.raises(ValueError, match="num_classes"):
        LayoutDiffusersUNet(tiny_sd()["unet"], {"levels": [0]})
    with pytest.raises(TypeError, match="UNet2DConditionModel or UNet2DModel"):
        LayoutDiffusersUNet(torch.nn.Linear(2, 2), SD_LAYOUT)


def test_without_task_prompts_no_processor_is_replaced():
    unet = tiny_sd()["unet"]
    model = LayoutDiffusersUNet(unet, {**SD_LAYOUT, "num_task_prompts": 0})
    assert {type(p).__name__ for p in unet.attn_processors.values()} == {"AttnProcessor2_0"}
    assert len(model.task_prompt) == 0 and model.adaptor.task_prompts is None
    x, t, ctx = sd_inputs(2)
    ref = tiny_sd()["unet"]
    with torch.no_grad():
        assert torch.equal(model(x, t, {"context": ctx}), ref(x, t, encoder_hidden_states=ctx).sample)


# --- the real architectures, built without memory ------------------------------------------------------

SD15_UNET = SD_ARCHITECTURES["sd15"]["unet"]
SD21_UNET = {**SD15_UNET, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20), "use_linear_projection": True}


@pytest.mark.parametrize("name", ["cocostuff_sd15", "cocostuff_sd21", "vg", "cocostuff", "celebmask"])
def test_config_adaptors_fit_the_real_architectures(name):
    """Each shipped config's adaptor goes into the real foundation architecture (on the meta device)."""
    from pathlib import Path

    from diffusers import UNet2DConditionModel, UNet2DModel

    from layoutdiffuse.sd.ldm import LDM_CELEBAHQ_256, unet_config_from_ldm

    config = json.loads((Path(__file__).resolve().parents[1] / "configs" / f"{name}.json").read_text())
    spec = config["adapt"]
    with torch.device("meta"):
        if spec["foundation"] == "ldm":
            unet = UNet2DModel(**unet_config_from_ldm(LDM_CELEBAHQ_256["model"]["params"]["unet_config"]["params"]))
        else:
            unet = UNet2DConditionModel(**(SD21_UNET if "2-1" in spec["path"] else SD15_UNET))
        model = LayoutDiffusersUNet(unet, spec["layout"], foundation=spec["foundation"])
    latent = config["data"]["image_size"] // 8 if spec["foundation"] == "stable_diffusion" else config["data"]["image_size"] // 4
    sizes = sorted({latent // 2 ** lvl for lvl in spec["layout"]["levels"]}, reverse=True)
    assert sizes == [32, 16]  # the reference's layout-attention resolutions
    n_attn = {"stable_diffusion": 10, "ldm": 10}[spec["foundation"]]
    assert len(model.adaptor.blocks) == n_attn
    assert model.adaptor.prompt_table.num_embeddings == spec["layout"]["num_classes"] + 1
