"""Config validation: every mistake fails before training, naming the key path."""
import json
from pathlib import Path

import pytest

from layoutdiffuse.config import ConfigError, load_config, set_override, validate

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "mnist.json")


@pytest.fixture
def config():
    return json.loads(open(CONFIG).read())


def test_shipped_config_validates(config):
    validate(config)


@pytest.mark.parametrize(
    "override, message",
    [
        ("denoising_model.res_block_type=resnet", "config key 'denoising_model.res_block_type': unknown res_block_type 'resnet'; choose one of: basic, scale_shift"),
        ("denoising_model.base_chanel=32", "unknown config key 'denoising_model.base_chanel'; allowed keys:"),
        ("denoising_model.base_channel=\"32\"", "config key 'denoising_model.base_channel' must be int, got string"),
        ("diffusion.training=DDPMTrainer", "config key 'diffusion.training': unknown training 'DDPMTrainer'"),
        ("diffusion.shedule=linear", "unknown config key 'diffusion.shedule'"),
        ("diffusion.ema_decay=\"high\"", "config key 'diffusion.ema_decay' must be number"),
        ("data.dataset=cifar", "config key 'data.dataset': unknown dataset 'cifar'"),
        ("data.image_sise=32", "unknown config key 'data.image_sise'"),
        ("trainer_args.max_step=3", "unknown config key 'trainer_args.max_step'"),
        ("callbacks.images.every=3", "unknown config key 'callbacks.images.every'"),
        ("optimiser.lr=1", "unknown config section 'optimiser'"),
    ],
)
def test_mistakes_name_the_key(config, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(set_override(config, override))


def test_missing_section(config):
    del config["diffusion"]
    with pytest.raises(ConfigError, match="missing the section 'diffusion'"):
        validate(config)


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_config(bad)


# --- the layout adaptor's options: one schema (layoutdiffuse.nn.options), checked on every path ---------

LAYOUT_MNIST = Path(CONFIG).parent / "layout_mnist.json"
ADAPTOR_KEYS = "embed_dim, instance_prompt, levels, mask, mask_pick, max_words, num_classes, num_heads, num_task_prompts, region_mask_attention, vocabulary"


@pytest.fixture
def foundation_config(tmp_path):
    """configs/layout_mnist.json adapting a tiny foundation checkpoint written here (so a key the
    config check missed would reach ``LayoutAdaptor.attach``)."""
    import torch

    from layoutdiffuse.nn import UNet
    from layoutdiffuse.training.callbacks import CKPT_KEY

    foundation = UNet(in_channel=1, out_channel=1, base_channel=8, channel_mult=(1, 2, 2), num_res_blocks=1, attn_levels=(1, 2))
    ckpt = tmp_path / "foundation.ckpt"
    torch.save({CKPT_KEY: {"model": foundation.config, "config": {}, "image_shape": [1, 32, 32]}, "state_dict": {f"model.{k}": v for k, v in foundation.state_dict().items()}}, ckpt)
    config = json.loads(LAYOUT_MNIST.read_text())
    config["adapt"]["foundation_ckpt"] = str(ckpt)
    path = tmp_path / "layout_mnist.json"
    path.write_text(json.dumps(config))
    return path, config


def test_an_adaptor_option_typo_exits_2_before_anything_is_built(foundation_config, monkeypatch, capsys):
    from layoutdiffuse import checkpoints, experiment, factory
    from layoutdiffuse.cli import main

    path, config = foundation_config
    assert factory.build_model(config).adaptor is not None  # the checkpoint is a real foundation
    for module in (experiment, factory, checkpoints):
        for name in ("build_model", "build_datasets", "read_checkpoint", "build_module", "sampling_model"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, lambda *a, **k: pytest.fail("something was built before the config check"))
    assert main(["train", "-c", str(path), "--set", "adapt.layout.embed_dimm=8"]) == 2  # the exit status of the command
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: unknown config key 'adapt.layout.embed_dimm'; allowed keys: {ADAPTOR_KEYS}"]


@pytest.mark.parametrize("override, message", [
    ("adapt.layout.embed_dim=\"8\"", "config key 'adapt.layout.embed_dim' must be int, got string"),
    ("adapt.layout.num_heads=0", "config key 'adapt.layout.num_heads' must be an integer >= 1, got 0"),
    ("adapt.layout.mask_pick=\"middle\"", "config key 'adapt.layout.mask_pick': unknown mask_pick 'middle'; choose one of: top_left, centre"),
    ("adapt.layout.levels=[1, -1]", "config key 'adapt.layout.levels' must list UNet levels (integers >= 0), got [1, -1]"),
    ("adapt.layout.task_prompt_form=\"gated\"", "unknown config key 'adapt.layout.task_prompt_form'"),  # a diffusers option
])
def test_adaptor_options_are_checked_on_the_foundation_ckpt_path(override, message):
    config = json.loads(LAYOUT_MNIST.read_text())
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        validate(set_override(config, override))


def test_the_same_schema_on_the_other_paths(config):
    from layoutdiffuse.nn.options import DiffusersLayoutOptions, LayoutAdaptorOptions

    config["denoising_model"]["layout"] = {"num_classes": 10, "embedim": 8}
    with pytest.raises(ConfigError, match="unknown config key 'denoising_model.layout.embedim'"):
        validate(config)
    sd = {**json.loads(LAYOUT_MNIST.read_text()), "adapt": {"foundation": "ldm", "path": "x", "layout": {"num_classes": 3, "mid_blok": False}}}
    with pytest.raises(ConfigError, match=r"unknown config key 'adapt.layout.mid_blok'; allowed keys: .*mid_block.*task_prompt_form"):
        validate(sd)
    with pytest.raises(ConfigError, match="config is missing 'adapt.layout.num_classes'"):
        validate({**sd, "adapt": {**sd["adapt"], "layout": {}}})
    assert LayoutAdaptorOptions.parse({"num_classes": 3}).levels == (0, 1)
    assert DiffusersLayoutOptions.parse({"num_classes": 3}).to_dict()["levels"] == [1, 2]  # the diffusers defaults


def test_the_attach_defaults_are_the_schema_defaults():
    import inspect

    from layoutdiffuse.nn import UNet
    from layoutdiffuse.nn.options import LayoutAdaptorOptions

    unet = UNet(base_channel=8, channel_mult=(1, 2, 2), num_res_blocks=1, layout={"num_classes": 4})
    adaptor, defaults = unet.adaptor, LayoutAdaptorOptions(num_classes=4)
    assert {unet.block_info[k][0] for k in adaptor.blocks} == set(defaults.levels)
    assert adaptor.prompt_table.embedding_dim == defaults.embed_dim and adaptor.task_prompts.shape[0] == defaults.num_task_prompts
    assert list(inspect.signature(type(adaptor).attach).parameters) == ["unet", "options"]  # no second list of defaults
    with pytest.raises(ConfigError, match="unknown config key 'layout.embed_dimm'"):
        UNet(base_channel=8, layout={"num_classes": 4, "embed_dimm": 8})


def test_validating_the_adapt_section_imports_no_model_and_no_torch():
    import subprocess
    import sys

    code = ("import json, sys; from layoutdiffuse.config import check_adapt; "
            "check_adapt({'foundation_ckpt': 'x.ckpt', 'layout': {'num_classes': 3}}); "
            "check_adapt({'foundation': 'ldm', 'path': 'x', 'layout': {'num_classes': 3, 'mid_block': False}}); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'pytorch_lightning') "
            "or m.startswith(('layoutdiffuse.nn.', 'layoutdiffuse.sd.')) and m not in ('layoutdiffuse.nn.options', 'layoutdiffuse.sd.spec'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(CONFIG).parents[1])
    assert json.loads(out.stdout) == []
