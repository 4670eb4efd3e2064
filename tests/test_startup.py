"""Start-up of the commands that sample: a model loaded only to sample is a ``SamplingModule`` (no
Lightning, no torchmetrics, no torch._dynamo or sympy before the first denoising step), and it samples exactly
as the training module loaded from the same file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import layoutdiffuse
from layoutdiffuse.checkpoints import MetaWithoutRandomInit, export_weights
from layoutdiffuse.factory import build_module, load_checkpoint
from layoutdiffuse.sampling import SHIPPED_MODEL, load_model, module_for
from layoutdiffuse.training.meta import CKPT_KEY, checkpoint_meta
from layoutdiffuse.training.sampling_module import SAMPLING_TRAININGS, SamplingModule

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

#: what a command that only samples must not import before its first denoising step
HEAVY = ("pytorch_lightning", "lightning", "lightning_fabric", "torchmetrics", "torchvision", "torch._dynamo", "sympy")

FIRST_STEP = """
import json, sys
from layoutdiffuse.diffusion.samplers import Sampler

HEAVY = {heavy!r}
seen = []
step = Sampler.step

def first_step(self, *args, **kwargs):
    if not seen:
        seen.append(sorted(m for m in HEAVY if m in sys.modules))
    return step(self, *args, **kwargs)

Sampler.step = first_step
{run}
print(json.dumps(seen))
"""


def imported_before_the_first_step(run: str) -> list[str]:
    """The modules of :data:`HEAVY` imported when ``run`` (Python code, in a fresh interpreter) reaches its first denoising step."""
    done = subprocess.run([sys.executable, "-c", FIRST_STEP.format(heavy=HEAVY, run=run)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(seen) == 1, "no denoising step was reached"
    return seen[0]


def test_the_sample_command_reaches_its_first_step_without_lightning(tmp_path):
    run = (f"from layoutdiffuse.cli import main\nassert main(['sample', '--layout', 'docs/example_layout.json', '--n', '1', "
           f"'--steps', '2', '--out', {str(tmp_path / 'x.png')!r}]) == 0")
    assert imported_before_the_first_step(run) == []
    assert (tmp_path / "x.png").stat().st_size > 0


def test_layoutdiffuse_sample_of_the_shipped_model_imports_no_lightning():
    run = "import layoutdiffuse\nimages, _ = layoutdiffuse.sample('docs/example_layout.json', n=1, steps=2)\nassert images.shape == (1, 1, 32, 32)"
    assert imported_before_the_first_step(run) == []


def test_the_edit_command_reaches_its_first_step_without_lightning(tmp_path):
    from layoutdiffuse.editing import save_image

    layout = REPO / "docs" / "example_layout.json"
    images, _ = layoutdiffuse.sample(str(layout), n=1, steps=2)
    save_image(images[0], tmp_path / "in.png")
    moved = json.loads(layout.read_text())
    moved[1]["box"][0] -= 0.2
    (tmp_path / "new.json").write_text(json.dumps(moved))
    run = (f"from layoutdiffuse.cli import main\nassert main(['edit', '--image', {str(tmp_path / 'in.png')!r}, '--layout', {str(layout)!r}, "
           f"'--new-layout', {str(tmp_path / 'new.json')!r}, '--steps', '2', '--out', {str(tmp_path / 'out.png')!r}]) == 0")
    assert not {"pytorch_lightning", "lightning_fabric", "torchmetrics"} & set(imported_before_the_first_step(run))  # (it reads PNGs with torchvision)
    assert (tmp_path / "out.png").stat().st_size > 0


# --- a SamplingModule samples as its training module -------------------------------------------------------

def tiny_config(name: str = "mnist.json", **diffusion) -> dict:
    config = json.loads((CONFIGS / name).read_text())
    config["denoising_model"].update(base_channel=8)
    config["diffusion"].update(diffusion)
    return config


def write_checkpoint(config: dict, path: Path) -> Path:
    """A Lightning-style checkpoint of an untrained module whose EMA weights differ from its live weights."""
    torch.manual_seed(0)
    module = build_module(config)
    if module.ema is not None:
        with torch.no_grad():
            for p in module.ema.module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    torch.save({"state_dict": module.state_dict(), CKPT_KEY: checkpoint_meta(module)}, path)
    return path


def assert_same_sampling(light, full) -> None:
    assert isinstance(light, SamplingModule) and not isinstance(full, SamplingModule)
    assert light.sampling_args == full.sampling_args and light.image_shape == full.image_shape
    assert light.class_names == full.class_names and light.label_names == full.label_names
    for name in ("is_layout_model", "is_mask_model", "is_text_model", "is_latent_model", "label_classes", "model_dtype", "device"):
        assert getattr(light, name) == getattr(full, name), name
    for key, value in full.diffusion.named_buffers():
        assert torch.equal(value, light.diffusion.get_buffer(key)), key
    want = full.sampling_model.state_dict()
    assert light.model.state_dict().keys() == want.keys()
    assert all(torch.equal(light.model.state_dict()[k], want[k]) for k in want)
    for options in ({}, {"sampler": "ancestral", "steps": 3}, {"sampler": "dpm++", "steps": 3, "guidance": 2.0}):
        a = layoutdiffuse.sample(n=3, ckpt=light, seed=1, **options)[0]
        b = layoutdiffuse.sample(n=3, ckpt=full, seed=1, **options)[0]
        assert torch.equal(a, b), options


@pytest.mark.parametrize("ema_decay", [0.99, 0.0])
def test_a_checkpoint_loaded_to_sample_samples_as_its_training_module(tmp_path, ema_decay):
    config = tiny_config(ema_decay=ema_decay, sampling={"sampler": "ddim", "steps": 4, "clip": True, "guidance": 3.0})
    path = write_checkpoint(config, tmp_path / "toy.ckpt")
    light, full = load_checkpoint(path, sampling_only=True), load_checkpoint(path)
    assert type(full).__name__ == "DDPM_MNIST" and full.label_classes == 10
    if ema_decay:  # the sampling weights are the EMA ones, not the live ones
        live, ema = full.model.state_dict(), light.model.state_dict()
        assert any(not torch.equal(live[k], ema[k]) for k in live)
    assert_same_sampling(light, full)
    export = export_weights(full, tmp_path / "toy.safetensors", half=False)
    assert_same_sampling(load_checkpoint(export, sampling_only=True), load_checkpoint(export))


def test_the_shipped_model_samples_the_same_either_way():
    light, full = load_model(), load_checkpoint(SHIPPED_MODEL, device="auto")
    assert light.is_layout_model and type(full).__name__ == "DDPMTraining"
    a, layouts = layoutdiffuse.sample("docs/example_layout.json", n=2, ckpt=light, steps=3)
    b, _ = layoutdiffuse.sample("docs/example_layout.json", n=2, ckpt=full, steps=3)
    assert torch.equal(a, b) and layouts.shape == (2, 2, 5)


def test_a_stray_tensor_is_refused_by_both_loaders(tmp_path):
    from layoutdiffuse.errors import UserError

    path = write_checkpoint(tiny_config(), tmp_path / "toy.ckpt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["stray.weight"] = torch.zeros(3)
    torch.save(ckpt, path)
    for sampling_only in (True, False):
        with pytest.raises(UserError, match=r"does not match its architecture: missing keys \[\], unexpected keys \['stray.weight'\]"):
            load_checkpoint(path, sampling_only=sampling_only)


def test_other_training_classes_load_as_their_training_module(tmp_path):
    """Improved DDPM keeps its own sampling defaults (ancestral, learned variance): loaded in full."""
    path = write_checkpoint(tiny_config("mnist_improved.json", sampling={"sampler": "ancestral", "steps": 3}), tmp_path / "improved.ckpt")
    module = load_checkpoint(path, sampling_only=True)
    assert type(module).__name__ == "DDIM_MNIST"
    assert load_model(path).__class__ is module.__class__


@pytest.mark.parametrize("name", SAMPLING_TRAININGS)
@pytest.mark.parametrize("sampling", [None, {"sampler": "plms", "steps": 7}])
def test_each_class_the_sampling_module_stands_for_has_its_diffusion_and_sampling_defaults(name, sampling):
    """Built from one config, the training class and the SamplingModule hold the same process and options
    (the guard against a class of SAMPLING_TRAININGS changing its defaults)."""
    config = tiny_config(training=name, schedule="cosine", num_timesteps=200, prediction="v")
    config["diffusion"].pop("sampling")
    if sampling is not None:
        config["diffusion"]["sampling"] = sampling
    full = build_module(config)
    light = SamplingModule.from_config(full.model, config, full.image_shape)
    assert type(full).__name__ == name and SamplingModule.reproduces(config)
    assert light.sampling_args == full.sampling_args
    assert (light.diffusion.num_timesteps, light.diffusion.prediction, light.diffusion.schedule, light.diffusion.learn_sigma) == \
        (full.diffusion.num_timesteps, full.diffusion.prediction, full.diffusion.schedule, full.diffusion.learn_sigma)
    assert torch.equal(light.diffusion.betas64, full.diffusion.betas64)


def test_module_for_takes_either_kind_of_module_and_loads_a_path(tmp_path):
    light = load_model()
    full = load_checkpoint(SHIPPED_MODEL)
    assert module_for(light, None, None) is light and module_for(full, None, None) is full
    assert isinstance(module_for(None, None, None), SamplingModule)
    assert layoutdiffuse.DDPMTraining.load_from_checkpoint(SHIPPED_MODEL).__class__.__name__ == "DDPMTraining"


def test_meta_modules_skip_only_the_meta_random_draws():
    with torch.device("meta"), MetaWithoutRandomInit():
        embedding = torch.nn.Embedding(5, 3)
        prompts = torch.randn(4, 2, dtype=torch.float16)
    assert embedding.weight.is_meta and embedding.weight.shape == (5, 3)
    assert prompts.is_meta and prompts.shape == (4, 2) and prompts.dtype == torch.float16
    torch.manual_seed(0)
    with MetaWithoutRandomInit():
        drawn = torch.randn(1000, generator=torch.Generator().manual_seed(1))
        real = torch.zeros(1000).normal_()
        initialised = torch.nn.init.normal_(torch.zeros(1000), std=2.0)
        on_meta = torch.randn(3, device="meta")
    assert torch.equal(drawn, torch.randn(1000, generator=torch.Generator().manual_seed(1)))  # tensors off the meta device: as usual
    assert 0.8 < real.std() < 1.2 and 1.6 < initialised.std() < 2.4 and on_meta.is_meta
