# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
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
# sampling with classifier-free guidance, and the loss curve.
#
# **Quick mode.** `LAYOUTDIFFUSE_QUICK=1` (what CI's nbval sets) shrinks every size and step count
# so the notebook runs in a minute or two on a CPU; without it you get the real settings of
# `configs/mnist.json`, the config of `make demo`: 28x28 digits, a class-conditional UNet (the
# digit's label is dropped 10 % of the time, so the same model also predicts unconditionally),
# v-prediction with min-SNR loss weighting, trained for a fixed time budget
# (`trainer_args.max_time`, 8 minutes on any machine) with a cosine learning rate that follows
# that budget. Why these choices: `benchmarks/sweep_mnist.py` and `docs/mnist_toy.md`.
# MNIST is read from `$LAYOUTDIFFUSE_DATA/MNIST` (default `~/data`); fetch it with
# `python data_scripts/download_mnist.py`.

# %%
import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch

from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.diffusion import GaussianDiffusion
from layoutdiffuse.experiment import build_loaders, build_module, build_trainer, experiment_dir
from layoutdiffuse.notebook_helpers import QUICK, load_notebook_config, metric_curve, quick_config, show
from layoutdiffuse.training import DDPMTraining
from layoutdiffuse.visualize import grid

torch.manual_seed(0)
config = load_notebook_config("mnist", expt_name="mnist_notebook")
if QUICK:
    config = quick_config(config, steps=40, samples=512, batch_size=config["data"]["batch_size"], base_channel=None, validate_every=40)
SIZE = config["data"]["image_size"]
print("quick mode" if QUICK else "full settings", "| steps:", config["trainer_args"]["max_steps"], "| time budget:", config["trainer_args"].get("max_time"))


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
# torchvision's MNIST yields `(image, label)`. As in the original release we override
# `process_batch` instead of touching the dataset. The release's toy dropped the label and trained
# on images only; this one keeps the label as the condition `{"label": (B,)}` that the
# class-conditional UNet (`denoising_model.num_classes`) adds to its timestep embedding:

# %%
class DDPM_MNIST(DDPMTraining):
    def process_batch(self, y_0, mode='train'):
        images, labels = y_0
        inputs = super().process_batch(images, mode)  # {"x0": images, "cond": None}
        inputs["cond"] = {"label": labels}
        return inputs


# The package registers this class under the same name (layoutdiffuse/training/mnist.py); the config
# names it in `diffusion.training`, and `build_module` -- the factory `train` uses -- builds it:
module = build_module(config)
print(config["diffusion"]["training"], "->", type(module).__module__ + "." + type(module).__name__)
print(f"UNet parameters: {sum(p.numel() for p in module.model.parameters()) / 1e6:.2f} M")

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
steps, losses = metric_curve(experiment_dir(config), "train/loss")
plt.plot(steps, losses)
plt.xlabel("step"); plt.ylabel(f"{config['diffusion']['prediction']} MSE, {config['diffusion'].get('loss_weighting', 'uniform')} weighting"); plt.yscale("log"); plt.title("training loss"); plt.show()
assert sum(losses[-3:]) < sum(losses[:3]), "the loss should fall"

# %% [markdown]
# ## DDPM vs DDIM
# Ancestral DDPM sampling walks the whole chain (1000 model calls); DDIM takes 50 deterministic
# steps. Both use the EMA weights and classifier-free guidance at the config's scale (3): every
# step runs the model with and without the label and moves the prediction
# `uncond + 3 * (cond - uncond)`. Image `i` is drawn as class `i % 10`, so each column is one digit.

# %%
import time

n = 20
results = {}
for name, opts in {"DDPM ancestral": dict(sampler="ancestral", steps=50 if QUICK else 1000), "DDIM": dict(sampler="ddim", steps=10 if QUICK else 50)}.items():
    start = time.perf_counter()
    results[name] = module.sample(n, generator=torch.Generator().manual_seed(0), **opts)
    print(f"{name}: {opts['steps']} steps, {time.perf_counter() - start:.1f} s for {n} images")
fig, axes = plt.subplots(2, 1, figsize=(10, 5))
for ax, (name, images) in zip(axes, results.items()):
    ax.imshow(grid(images, nrow=10, scale=2).permute(1, 2, 0)); ax.set_title(name); ax.axis("off")
plt.show()
