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
