# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · The MNIST toy: a DDPM from scratch
#
# The smallest complete run of the package: the forward (noising) process as pictures, the
# `process_batch` hook that adapts a dataset, training with PyTorch Lightning, DDPM vs DDIM
# sampling, and the loss curve.
#
# **Quick mode.** `LAYOUTDIFFUSE_QUICK=1` (what CI's nbval sets) shrinks every size and step count
# so the notebook runs in a minute or two on a CPU; without it you get the real settings of
# `configs/mnist.json`, the config of `make demo`: 28x28 digits, v-prediction with min-SNR loss
# weighting, trained for a fixed time budget (`trainer_args.max_time`, 8 minutes on any machine)
# with a cosine learning rate that follows that budget.
# MNIST is read from `$LAYOUTDIFFUSE_DATA/MNIST` (default `~/data`); fetch it with
# `python data_scripts/download_mnist.py`.

# %%
import json
import os

import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch

from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.diffusion import GaussianDiffusion
from layoutdiffuse.experiment import build_loaders, build_trainer, experiment_dir
from layoutdiffuse.malloc import retain_freed_memory
from layoutdiffuse.nn import UNet
from layoutdiffuse.training import DDPMTraining
from layoutdiffuse.visualize import grid

QUICK = os.environ.get("LAYOUTDIFFUSE_QUICK") == "1"
retain_freed_memory()  # CPU steps reuse freed memory, as `python -m layoutdiffuse` does (layoutdiffuse/malloc.py)
torch.manual_seed(0)
config = json.load(open("../configs/mnist.json" if os.path.exists("../configs/mnist.json") else "configs/mnist.json"))
config["expt_name"] = "mnist_notebook"
if QUICK:
    config["trainer_args"].update(max_steps=40, limit_val_batches=1, val_check_interval=40, log_every_n_steps=4)
    config["diffusion"]["lr_scheduler"].update(warmup_steps=5, total_steps=40)
    config["data"].update(limit=512, num_workers=0)
    config["callbacks"] = {}
SIZE = config["data"]["image_size"]
print("quick mode" if QUICK else "full settings", "| steps:", config["trainer_args"]["max_steps"], "| time budget:", config["trainer_args"].get("max_time"))


def show(img, title=None, size=6):
    plt.figure(figsize=(size, size))
    plt.imshow(img.permute(1, 2, 0))
    plt.axis("off")
    if title:
        plt.title(title)
    plt.show()


# %% [markdown]
# ## The forward process
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$: each row is one digit, each
# column a timestep of the linear schedule (β from 1e-4 to 0.02 over 1000 steps).

# %%
train_set = DATASETS.get("mnist")(split="train", image_size=SIZE, limit=config["data"].get("limit"))
diffusion = GaussianDiffusion(**{k: v for k, v in config["diffusion"].items() if k in ("schedule", "num_timesteps", "prediction")})
x0 = torch.stack([train_set[i][0] for i in range(6)])
ts = [0, 50, 100, 200, 400, 700, 999]
noisy = torch.stack([diffusion.q_sample(x0, torch.full((6,), t), torch.randn_like(x0)) for t in ts], 1).flatten(0, 1)
show(grid(noisy, nrow=len(ts), scale=2), "t = " + ", ".join(map(str, ts)))
plt.plot(diffusion.alphas_cumprod.sqrt(), label=r"$\sqrt{\bar\alpha_t}$ (signal)")
plt.plot((1 - diffusion.alphas_cumprod).sqrt(), label=r"$\sqrt{1-\bar\alpha_t}$ (noise)")
plt.xlabel("t"); plt.legend(); plt.show()

# %% [markdown]
# ## Adapting a dataset: `process_batch`
# torchvision's MNIST yields `(image, label)`. The denoiser takes images only, so — exactly as in
# the original release — we override `process_batch` instead of touching the dataset:

# %%
class DDPM_MNIST(DDPMTraining):
    def process_batch(self, y_0, mode='train'):
        return super().process_batch(y_0[0], mode)


model = UNet(**config["denoising_model"])
process = {k: v for k, v in config["diffusion"].items() if k in DDPMTraining.PROCESS_KEYS and k != "training"}
training_args = {k: v for k, v in config["diffusion"].items() if k not in DDPMTraining.PROCESS_KEYS}
module = DDPM_MNIST(model, diffusion=process, image_shape=(1, SIZE, SIZE), config=config, **training_args)
print(f"UNet parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M")

# %% [markdown]
# ## Training with Lightning
# The module holds the research logic; the `Trainer` (built from `trainer_args` in the config)
# holds devices, precision and checkpoints. Metrics go to `experiments/<name>/logs/metrics.csv`.

# %%
pl.seed_everything(0, verbose=False)
datasets = {"train": train_set, "val": DATASETS.get("mnist")(split="val", image_size=SIZE, limit=256)}
loaders = build_loaders(config, datasets)
trainer = build_trainer(config, enable_progress_bar=not QUICK)
trainer.fit(module, loaders["train"], loaders["val"])

# %% [markdown]
# ## The loss curve

# %%
import csv

rows = list(csv.DictReader(open(experiment_dir(config) / "logs" / "metrics.csv")))
steps = [int(r["step"]) for r in rows if r.get("train/loss")]
losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
plt.plot(steps, losses)
plt.xlabel("step"); plt.ylabel(f"{config['diffusion']['prediction']} MSE, {config['diffusion'].get('loss_weighting', 'uniform')} weighting"); plt.yscale("log"); plt.title("training loss"); plt.show()
assert sum(losses[-3:]) < sum(losses[:3]), "the loss should fall"

# %% [markdown]
# ## DDPM vs DDIM
# Ancestral DDPM sampling walks the whole chain (1000 model calls); DDIM takes 50 deterministic
# steps. Both use the EMA weights.

# %%
import time

n = 16
results = {}
for name, opts in {"DDPM ancestral": dict(sampler="ancestral", steps=50 if QUICK else 1000), "DDIM": dict(sampler="ddim", steps=10 if QUICK else 50)}.items():
    start = time.perf_counter()
    results[name] = module.sample(n, generator=torch.Generator().manual_seed(0), **opts)
    print(f"{name}: {opts['steps']} steps, {time.perf_counter() - start:.1f} s for {n} images")
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
for ax, (name, images) in zip(axes, results.items()):
    ax.imshow(grid(images, nrow=4, scale=2).permute(1, 2, 0)); ax.set_title(name); ax.axis("off")
plt.show()
