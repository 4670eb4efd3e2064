"""End to end on Layout-MNIST: pretrain a foundation, adapt it by config, sample with guidance,
export, and drive the sampling CLI (including its user errors)."""
import json
from pathlib import Path

import pytest
import torch

from layoutdiffuse.cli import main
from layoutdiffuse.errors import UserError
from layoutdiffuse.experiment import build_model, export_weights, load_checkpoint, sampling_state_dict, train
from layoutdiffuse.sampling import sample

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny(config_name, tmp_path, root, **updates):
    config = json.loads(open(CONFIGS / f"{config_name}.json").read())
    config["expt_dir"] = str(tmp_path)
    config["data"].update(root=str(root), length=64, batch_size=8, num_workers=0, image_size=32)
    config["trainer_args"] = {"max_steps": 3, "accelerator": "cpu", "limit_val_batches": 1, "val_check_interval": 3, "enable_progress_bar": False, "logger": False}
    config["callbacks"] = {"images": {"every_n_train_steps": 0, "n": 4, "steps": 3}}
    if "denoising_model" in config:
        config["denoising_model"].update(base_channel=8)
    config.update(updates)
    return config


@pytest.fixture(scope="module")
def adapted(tmp_path_factory, mnist_root):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("pipeline")
    train(tiny("layout_mnist_foundation", tmp, mnist_root))
    foundation_ckpt = tmp / "layout_mnist_foundation" / "checkpoints" / "last.ckpt"
    config = tiny("layout_mnist", tmp, mnist_root)
    config["adapt"]["foundation_ckpt"] = str(foundation_ckpt)
    before = build_model(config)
    module = train(config)
    return tmp, foundation_ckpt, before, module


def test_adapted_model_starts_as_the_foundation(adapted):
    tmp, foundation_ckpt, before, _ = adapted
    foundation = load_checkpoint(foundation_ckpt).sampling_model
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([10, 900])
    layout = torch.tensor([[[0.1, 0.1, 0.4, 0.5, 3.0], [0.5, 0.4, 0.3, 0.5, 7.0]]] * 2)
    assert torch.equal(before(x, t, {"layout": layout}), foundation(x, t))
    state = sampling_state_dict(torch.load(foundation_ckpt, weights_only=True)["state_dict"])
    assert all(torch.equal(before.state_dict()[k], v) for k, v in state.items())


def test_adapted_checkpoint_samples_with_layouts(adapted, tmp_path):
    tmp, *_ = adapted
    ckpt = tmp / "layout_mnist" / "checkpoints" / "last.ckpt"
    module = load_checkpoint(ckpt)
    assert module.class_names == [str(i) for i in range(10)]
    assert (tmp / "layout_mnist" / "images" / "step_000003.png").exists()  # the image logger drew a grid
    layout = [{"label": "3", "box": [0.1, 0.1, 0.4, 0.5]}, {"label": 7, "box": [0.5, 0.4, 0.3, 0.5]}]
    images, layouts = sample(layout, n=3, ckpt=module, steps=3, guidance=2.0, seed=1)
    assert images.shape == (3, 1, 32, 32) and layouts.shape == (3, 2, 5)
    again, _ = sample(layout, n=3, ckpt=module, steps=3, guidance=2.0, seed=1)
    assert torch.equal(images, again)
    empty, _ = sample([], n=2, ckpt=module, steps=3)
    assert empty.shape == (2, 1, 32, 32)
    # the safetensors export reproduces the checkpoint's samples
    export = export_weights(module, tmp_path / "m.safetensors", half=False)
    exported, _ = sample(layout, n=3, ckpt=load_checkpoint(export), steps=3, guidance=2.0, seed=1)
    assert torch.allclose(exported, images, atol=1e-5)
    # sampler defaults chosen at export replace the training config's, and nothing else changes
    chosen = load_checkpoint(export_weights(module, tmp_path / "s.safetensors", half=False, sampling={"sampler": "ddim", "guidance": 2.5}),
                             sampling_only=True)
    assert chosen.sampling_args == {**module.sampling_args, "sampler": "ddim", "guidance": 2.5}
    assert module.config["diffusion"].get("sampling", {}).get("sampler") != "ddim"  # the module's own config is untouched
    with pytest.raises(UserError, match="sampling.sampler"):
        export_weights(module, tmp_path / "bad.safetensors", sampling={"sampler": "nope"})


def test_sample_cli_and_its_user_errors(adapted, tmp_path, capsys):
    tmp, *_ = adapted
    ckpt = str(tmp / "layout_mnist" / "checkpoints" / "last.ckpt")
    layout_file = tmp_path / "layout.json"
    layout_file.write_text(json.dumps([{"label": "1", "box": [0.2, 0.2, 0.3, 0.6]}]))
    out = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", ckpt, "--layout", str(layout_file), "--n", "2", "--steps", "2", "--out", str(out)]) == 0
    assert out.stat().st_size > 0

    def error_of(args):
        capsys.readouterr()
        assert main(args) == 2
        return capsys.readouterr().err.strip()

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"label": "cat", "box": [0.1, 0.1, 0.2, 0.2]}]))
    assert "unknown label 'cat'" in error_of(["sample", "--ckpt", ckpt, "--layout", str(bad)])
    bad.write_text(json.dumps([{"label": "2", "box": [0.8, 0.1, 0.5, 0.2]}]))
    assert "leaves the image" in error_of(["sample", "--ckpt", ckpt, "--layout", str(bad)])
    assert "does not exist" in error_of(["sample", "--ckpt", str(tmp_path / "nope.ckpt")])
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00garbage")
    assert "not a readable checkpoint" in error_of(["sample", "--ckpt", str(junk)])
    for message in [error_of(["sample", "--ckpt", ckpt, "--layout", str(bad)])]:
        assert "\n" not in message and "Traceback" not in message
