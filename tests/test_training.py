"""Training: a tiny model overfits, and resume is exact."""
import csv
import json
from pathlib import Path

import pytest
import torch

from layoutdiffuse.experiment import load_checkpoint, read_checkpoint, train
from layoutdiffuse.nn import UNet
from layoutdiffuse.training import DDPMTraining

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_tiny_model_overfits_a_handful_of_images():
    torch.manual_seed(0)
    images = torch.rand(4, 1, 16, 16).round() * 2 - 1
    model = UNet(1, 1, base_channel=16, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[])
    module = DDPMTraining(model, {"num_timesteps": 100}, image_shape=(1, 16, 16), ema_decay=0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    fixed_t = torch.tensor([10, 30, 50, 70])
    fixed_noise = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))

    def loss_now():
        with torch.no_grad():
            return module.compute_losses(images, fixed_t, None, fixed_noise)["loss"].mean().item()

    before = loss_now()
    g = torch.Generator().manual_seed(2)
    for _ in range(120):
        opt.zero_grad()
        t, noise = torch.randint(0, 100, (4,), generator=g), torch.randn(4, 1, 16, 16, generator=g)
        module.compute_losses(images, t, None, noise)["loss"].mean().backward()
        opt.step()
    after = loss_now()
    assert after < 0.4 * before, (before, after)


def tiny_config(tmp_path, root, name, max_steps):
    config = json.loads(open(CONFIGS / "mnist.json").read())
    config.update(expt_name=name, expt_dir=str(tmp_path))
    config["denoising_model"].update(base_channel=8, channel_mult=[1, 2], attn_levels=[1])
    config["data"].update(root=str(root), limit=24, batch_size=8, num_workers=0, image_size=16)
    config["diffusion"]["lr_scheduler"] = {"name": "cosine", "warmup_steps": 2, "total_steps": 8}
    config["trainer_args"] = {"max_steps": max_steps, "accelerator": "cpu", "limit_val_batches": 0, "enable_progress_bar": False, "logger": False}
    config["callbacks"] = {"checkpoint": {"every_n_train_steps": 4}}
    return config


def weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.slow
def test_resume_is_exact(tmp_path, mnist_root):
    """8 steps straight == 4 steps, stop, resume from the checkpoint, 4 more (mid-epoch: 3 batches/epoch)."""
    straight = train(tiny_config(tmp_path, mnist_root, "straight", 8))
    train(tiny_config(tmp_path, mnist_root, "split", 4))
    ckpt = tmp_path / "split" / "checkpoints" / "last.ckpt"
    resumed = train(tiny_config(tmp_path, mnist_root, "split", 8), resume=ckpt)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    diffs = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a}
    assert max(diffs.values()) == 0, {k: v for k, v in diffs.items() if v}
    assert resumed.trainer_ref.global_step == 8
    # and the weights really moved during the resumed half
    first_half = load_checkpoint(tmp_path / "split" / "checkpoints" / "step_000004.ckpt")
    assert any(not torch.equal(v, first_half.state_dict()[k]) for k, v in b.items() if k.startswith("model."))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        read_checkpoint(junk)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a layoutdiffuse checkpoint"):
        read_checkpoint(foreign)


@pytest.mark.slow
def test_resume_keeps_the_logged_history(tmp_path, mnist_root):
    """Lightning's CSV writer starts a fresh metrics.csv; a resumed run still holds every step once."""
    def config(max_steps):
        c = tiny_config(tmp_path, mnist_root, "logged", max_steps)
        c["trainer_args"].pop("logger")
        c["trainer_args"]["log_every_n_steps"] = 1
        return c

    train(config(4))
    train(config(6), resume=tmp_path / "logged" / "checkpoints" / "step_000004.ckpt")
    train(config(8), resume="last")  # from step 6: the rows of steps 4-5 logged before stay, none twice
    with open(tmp_path / "logged" / "logs" / "metrics.csv", newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f) if row["train/loss"]]
    assert steps == list(range(8))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighting_is_min_snr_times_the_x0_error(prediction):
    """Min-SNR-gamma: weight * MSE(target) == min(SNR_t, gamma) * MSE(x0), whatever the target."""
    from layoutdiffuse.diffusion import GaussianDiffusion
    from layoutdiffuse.training.ddpm import min_snr_weights

    g = torch.Generator().manual_seed(0)
    d = GaussianDiffusion("linear", 1000, prediction=prediction)
    x0, noise, out = (torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 5, 50, 300, 700, 999])
    xt = d.q_sample(x0, t, noise)
    abar = torch.cumprod(1 - d.betas64, 0)[t]  # float64, independent of the float32 buffers
    snr = abar / (1 - abar)
    a, s = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)
    x0_hat = {"eps": (xt - s * out) / a, "x0": out, "v": a * xt - s * out}[prediction]  # closed forms
    target = {"eps": noise, "x0": x0, "v": a * noise - s * x0}[prediction]
    lhs = min_snr_weights(d, t, 5.0).double() * ((out - target) ** 2).flatten(1).mean(1)
    rhs = snr.clamp(max=5.0) * ((x0_hat - x0) ** 2).flatten(1).mean(1)
    assert torch.allclose(lhs, rhs, rtol=1e-4)


def test_loss_weighting_is_checked():
    from layoutdiffuse.errors import UserError

    model = UNet(1, 1, base_channel=8, channel_mult=[1], num_res_blocks=1, attn_levels=[])
    with pytest.raises(UserError, match="unknown loss_weighting 'snr'; choose one of: uniform, min_snr"):
        DDPMTraining(model, {"num_timesteps": 100}, loss_weighting="snr")
    with pytest.raises(UserError, match="min_snr_gamma must be > 0"):
        DDPMTraining(model, {"num_timesteps": 100}, loss_weighting="min_snr", min_snr_gamma=0)


VALIDATION_LOSS = """
import torch
from layoutdiffuse.nn import UNet
from layoutdiffuse.training import DDPMTraining
torch.manual_seed(0)
model = UNet(1, 1, base_channel=8, channel_mult=[1], num_res_blocks=1, attn_levels=[])
module = DDPMTraining(model, {"num_timesteps": 100}, image_shape=(1, 8, 8), ema_decay=0)
module.log = lambda *args, **kwargs: None
images = torch.linspace(-1, 1, 2 * 64).reshape(2, 1, 8, 8)
with torch.no_grad():
    print(repr([module.shared_step(images, mode)["loss"].item() for mode in ("val", "test")]))
"""


def test_validation_noise_is_the_same_in_every_process():
    """Validation/test noise comes from fixed generator offsets, not from ``hash(str)``, which Python
    salts per process (PYTHONHASHSEED)."""
    import os
    import subprocess
    import sys

    import contextlib
    import io

    here = io.StringIO()
    with contextlib.redirect_stdout(here):
        exec(VALIDATION_LOSS, {})
    salt = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"  # another salt than this process's
    there = subprocess.run([sys.executable, "-c", VALIDATION_LOSS], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": salt}).stdout
    assert here.getvalue() == there
    val, test = eval(there)
    assert val != test  # each stage draws its own noise


def test_init_ckpt_fine_tunes_from_the_sampling_weights(tmp_path):
    """``init_ckpt``: a new run whose model starts from a trained module's EMA weights."""
    from layoutdiffuse.config import ConfigError, validate
    from layoutdiffuse.experiment import build_module, export_weights

    config = json.loads(open(CONFIGS / "mnist.json").read())
    config["denoising_model"].update(base_channel=8, channel_mult=[1, 2], attn_levels=[1])
    trained = build_module(config)
    with torch.no_grad():
        for p in trained.ema.module.parameters():
            p.normal_()
    path = export_weights(trained, tmp_path / "trained.safetensors", half=False)
    fine = {k: v for k, v in config.items() if k != "denoising_model"}
    fine["init_ckpt"] = str(path)
    validate(fine)
    module = build_module(fine)
    for (name, a), b in zip(module.model.state_dict().items(), trained.ema.module.state_dict().values()):
        assert torch.equal(a, b), name
    assert module.model.training  # ready to train, not left in eval mode
    with pytest.raises(ConfigError, match="exactly one of"):
        validate({**fine, "denoising_model": config["denoising_model"]})
