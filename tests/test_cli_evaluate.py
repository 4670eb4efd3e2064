"""``python -m layoutdiffuse evaluate``: bits/dim and digit-FID as JSON; user errors exit 2 with one line."""
import json
import math
import os
import subprocess
import sys

import pytest

from layoutdiffuse.cli import main
from layoutdiffuse.experiment import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_checkpoint(tmp_path, root, config_name, name):
    """A few training steps of a shrunken ``configs/<config_name>`` (16x16, 50 timesteps)."""
    with open(os.path.join(REPO, "configs", config_name)) as f:
        config = json.load(f)
    config.update(expt_name=name, expt_dir=str(tmp_path))
    config["denoising_model"].update(base_channel=8, channel_mult=[1, 2], attn_levels=[])
    config["diffusion"].update(num_timesteps=50)
    config["diffusion"]["lr_scheduler"].update(warmup_steps=1, total_steps=3)
    config["data"].update(root=str(root), limit=24, batch_size=8, num_workers=0, image_size=16)
    config["trainer_args"].update(max_steps=3, limit_val_batches=0, enable_progress_bar=False, log_every_n_steps=1)
    config["callbacks"] = {}
    train(config)
    return tmp_path / name / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def improved_ckpt(tmp_path_factory, mnist_root):
    return tiny_checkpoint(tmp_path_factory.mktemp("improved"), mnist_root, "mnist_improved.json", "tiny_improved")


def run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_nll_prints_finite_bits_per_dim(improved_ckpt, mnist_root, capsys):
    out = run_json(capsys, ["evaluate", "--ckpt", str(improved_ckpt), "--nll", "--n", "3", "--data-root", str(mnist_root)])
    nll = out["nll"]
    assert nll["variance"] == "learned" and nll["n"] == 3 and nll["num_timesteps"] == 50
    assert math.isfinite(nll["bits_per_dim"]) and nll["bits_per_dim"] > 0
    assert 0 <= nll["prior_LT_bpd"] < nll["bits_per_dim"]


def test_nll_of_a_fixed_variance_model(tmp_path, mnist_root, capsys):
    ckpt = tiny_checkpoint(tmp_path, mnist_root, "mnist.json", "tiny_ddpm")
    nll = run_json(capsys, ["evaluate", "--ckpt", str(ckpt), "--nll", "--n", "2", "--data-root", str(mnist_root)])["nll"]
    assert nll["variance"] == "fixed_small" and math.isfinite(nll["bits_per_dim"]) and nll["bits_per_dim"] > 0


def test_fid_prints_a_digit_fid(improved_ckpt, mnist_root, capsys):
    argv = ["evaluate", "--ckpt", str(improved_ckpt), "--fid", "--sampler", "dpm++", "--steps", "3", "--n", "4", "--data-root", str(mnist_root)]
    fid = run_json(capsys, argv)["fid"]
    assert fid["sampler"] == "dpm++" and fid["steps"] == 3 and fid["n"] == 4
    assert math.isfinite(fid["digit_fid"]) and fid["digit_fid"] >= 0 and fid["seconds_per_image"] > 0


def test_wrong_checkpoint_path_exits_2_with_one_line(tmp_path):
    argv = [sys.executable, "-m", "layoutdiffuse", "evaluate", "--ckpt", str(tmp_path / "missing.ckpt"), "--nll"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing.ckpt does not exist" in lines[0], proc.stderr
    assert proc.stdout == ""


def test_nothing_to_evaluate_is_a_user_error(improved_ckpt, capsys):
    assert main(["evaluate", "--ckpt", str(improved_ckpt)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to evaluate" in err[0]


def test_bad_sampler_is_a_user_error(improved_ckpt, mnist_root, capsys):
    argv = ["evaluate", "--ckpt", str(improved_ckpt), "--fid", "--sampler", "euler", "--n", "2", "--data-root", str(mnist_root)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown sampler 'euler'" in err[0]


SHIPPED = os.path.join(REPO, "layoutdiffuse", "weights", "layout_mnist.safetensors")


def test_layout_scores_of_the_shipped_model(mnist_root, capsys):
    argv = ["evaluate", "--ckpt", SHIPPED, "--layout", "--n", "4", "--steps", "3", "--guidance", "1.5", "--data-root", str(mnist_root)]
    out = run_json(capsys, argv)["layout"]
    assert (out["n"], out["steps"], out["guidance"], out["sampler"]) == (4, 3, 1.5, "dpm++")
    assert out["boxes"] >= 4 and 0 <= out["layout_accuracy"] <= 1 and len(out["per_class_accuracy"]) == 10
    assert out["layout_accuracy_real_canvases"] >= 0.75  # the crop judge reads real canvases
    assert set(out["detection"]) == {"ap", "ap50", "ap75", "exact50"} and 0 <= out["detection"]["ap50"] <= 1
    assert out["detection_real_canvases"]["ap50"] >= 0.75  # the detector finds real digits
    assert out["digit_fid"] > out["digit_fid_real_vs_real"] >= 0 and out["diversity_lpips"] > 0


def test_layout_scores_need_a_layout_model(improved_ckpt, mnist_root, capsys):
    assert main(["evaluate", "--ckpt", str(improved_ckpt), "--layout", "--n", "2", "--data-root", str(mnist_root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a layout model" in err[0]


def test_digits_scores_the_class_conditional_toy(tmp_path, mnist_root, capsys):
    """``--digits`` on the MNIST toy (class-conditional): the shares read as digits and as the class asked for."""
    ckpt = tiny_checkpoint(tmp_path, mnist_root, "mnist.json", "tiny_classes")
    digits = run_json(capsys, ["evaluate", "--ckpt", str(ckpt), "--digits", "--n", "6", "--steps", "2", "--guidance", "2"])["digits"]
    assert digits["sampler"] == "ancestral" and digits["steps"] == 2 and digits["guidance"] == 2.0 and digits["n"] == 6
    for key in ("confident_fraction", "digit_fraction", "label_accuracy"):
        assert 0 <= digits[key] <= 1 and abs(digits[key] * 6 - round(digits[key] * 6)) < 1e-3, (key, digits)  # a share of 6 images
    assert digits["digit_fraction"] <= digits["confident_fraction"]


def test_digits_refuses_a_layout_model(capsys):
    shipped = os.path.join(REPO, "layoutdiffuse", "weights", "layout_mnist.safetensors")
    assert main(["evaluate", "--ckpt", shipped, "--digits"]) == 2
    assert "for a layout model use layout" in capsys.readouterr().err
