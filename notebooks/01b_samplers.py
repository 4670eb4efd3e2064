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
# # 01b · Samplers side by side, and bits/dim
#
# One trained MNIST toy (`configs/mnist.json`, a DDPM) sampled by every registered sampler at
# several step counts from the same noise: 1000-step ancestral DDPM as the reference, the ancestral
# sampler respaced to fewer steps, DDIM, PLMS, DPM-Solver++(2M) and its stochastic twin
# SDE-DPM-Solver++(2M) (`dpm++sde`). Each cell carries a number:
# the **digit-FID** against MNIST-test (the
# shipped digit classifier's features, `layoutdiffuse.evaluation`). Then the improved-DDPM toy
# (`configs/mnist_improved.json`: learned variance, cosine schedule) is scored by its
# variational bound in **bits/dim** on MNIST-test, next to the DDPM's bound with its fixed variance.
#
# The same numbers come from the command line:
#
#     python -m layoutdiffuse evaluate --ckpt experiments/mnist_improved/checkpoints/last.ckpt --nll --n 128
#     python -m layoutdiffuse evaluate --ckpt experiments/mnist/checkpoints/last.ckpt --fid --sampler dpm++ --steps 20 --n 256
#     python benchmarks/bench_samplers.py experiments/mnist/checkpoints/last.ckpt --n 256
#
# The full settings (256 images per cell, bits/dim of 128 test digits for each toy) make about
# 600,000 image-evaluations of the UNet: roughly half an hour on 2 free CPU cores, a minute on a GPU.
#
# **Checkpoints.** Trained toys are read from `experiments/<name>/checkpoints/last.ckpt` at the
# repository root (`python -m layoutdiffuse train -c configs/mnist.json`, and the same for
# `mnist_improved.json`); with the real settings a missing one is trained here first (minutes on
# a CPU).
#
# **Quick mode.** `LAYOUTDIFFUSE_QUICK=1` (what CI's nbval sets) uses a present checkpoint or trains
# a tiny model (100 timesteps) for 30 steps, draws 8 images per cell at few steps, scores them
# against 1,000 test digits, and computes bits/dim on 2 test digits, on one CPU thread: a minute or
# two. An FID of 8 images is a smoke test, not a measurement, and the pictures are those of an
# untrained model; run without the switch for real ones.

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from layoutdiffuse.data.mnist import mnist_test_images
from layoutdiffuse.evaluation.bits_per_dim import bits_per_dim
from layoutdiffuse.notebook_helpers import QUICK, repo_root
from layoutdiffuse.sampling import timed_samples
from layoutdiffuse.config import load_config
from layoutdiffuse.evaluation import FeatureFID, load_digit_classifier
from layoutdiffuse.experiment import load_checkpoint, train
from layoutdiffuse.visualize import grid

REPO = repo_root()
torch.manual_seed(0)
if QUICK:  # batches of 2-32 gain nothing from intra-op threads, and lose a lot on a busy shared CPU
    torch.set_num_threads(1)

N = 8 if QUICK else 256  # images per cell (the score uses all, the picture the first 16)
STEPS = [5, 10] if QUICK else [10, 20, 25, 50]
REFERENCE_STEPS = 50 if QUICK else 1000  # ancestral reference (quick: respaced to 50)
NLL_N = 2 if QUICK else 128
print("quick mode" if QUICK else "full settings", f"| {N} images per cell, steps {STEPS}, ancestral {REFERENCE_STEPS}")


def toy(config_name: str) -> tuple[torch.nn.Module, str]:
    """The trained toy of ``configs/<config_name>`` from the repository's ``experiments/``; else train one
    (quick: a tiny UNet on a 100-step chain, 30 steps on 512 digits, under ``notebooks/experiments``)."""
    config = load_config(REPO / "configs" / config_name)
    ckpt = REPO / "experiments" / config["expt_name"] / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        return load_checkpoint(ckpt), str(ckpt)
    if QUICK:
        config.update(expt_name=f"{config['expt_name']}_quick", expt_dir="experiments")
        config["denoising_model"].update(base_channel=16, channel_mult=[1, 2], attn_levels=[])
        config["diffusion"].update(num_timesteps=100)
        config["diffusion"]["lr_scheduler"].update(warmup_steps=5, total_steps=30)
        config["data"].update(limit=512, batch_size=32, num_workers=0)
        config["trainer_args"].update(max_steps=30, limit_val_batches=0)
        config["callbacks"] = {}
    else:
        config["expt_dir"] = str(REPO / "experiments")
    module = train(config, overwrite=QUICK, enable_progress_bar=not QUICK).eval()  # quick runs start over in their scratch folder
    return module, f"trained here: {module.trainer_ref.global_step} steps ({config['expt_name']})"


module, source = toy("mnist.json")
print("DDPM toy:", source)

# %% [markdown]
# ## The score of a cell
# digit-FID: Fréchet distance between Gaussians fitted to the classifier's pooled features of the
# cell's samples and of the MNIST-test images (all 10,000; quick: the first 1,000). Lower is
# better, and numbers compare only at the same `N`: for scale, the same FID of `N` real
# MNIST-*train* digits is the floor a perfect model would reach at this `N`.

# %%
from layoutdiffuse.data.registry import DATASETS

classifier = load_digit_classifier()
size = module.image_shape[-1]
fid = FeatureFID(classifier.features)
fid.update(mnist_test_images(size, 1000 if QUICK else None), real=True)


def score(images):
    fid.reset()
    fid.update(images, real=False)
    return fid.compute()


train_set = DATASETS.get("mnist")(split="train", image_size=size, download=False)
real = torch.stack([train_set[i][0] for i in torch.randperm(len(train_set))[:N].tolist()])
score_name = "digit-FID"
print(f"floor: digit-FID of {N} real MNIST-train digits = {score(real):.2f}")

# %% [markdown]
# ## Every sampler at every step count, from the same seed
# Ancestral sampling draws fresh noise at each step, so its samples differ from the deterministic
# samplers' even from the same starting noise; DDIM, PLMS and DPM-Solver++ are deterministic
# maps of the starting noise and converge to the same images (those of the probability-flow ODE)
# as the steps grow. On the toy checkpoints of the configs they get there by 10-25 steps, at an
# FID well above the 1000-step ancestral one: that gap is the model's ODE, not solver error.
# The stochastic samplers (respaced ancestral, `dpm++sde`) inject fresh noise at every step,
# which corrects part of a briefly trained model's error; they are the better few-step
# samplers for these toys.

# %%
cells = {}
SAMPLERS = ["ancestral", "ddim", "plms", "dpm++", "dpm++sde"]  # ancestral at fewer steps: the respaced chain
for name, steps in [("ancestral", REFERENCE_STEPS)] + [(s, k) for s in SAMPLERS for k in STEPS if (s, k) != ("ancestral", REFERENCE_STEPS)]:
    images, seconds = timed_samples(module, N, name, steps, seed=0)
    cells[name, steps] = dict(images=images, score=score(images), seconds_per_image=seconds / N)
    print(f"{name:>9} {steps:>4} steps: {score_name} {cells[name, steps]['score']:7.3f}   {1000 * seconds / N:7.1f} ms/image")

# %%
rows = SAMPLERS
fig, axes = plt.subplots(len(rows), len(STEPS) + 1, figsize=(2.6 * (len(STEPS) + 1), 2.9 * len(rows)))
for r, name in enumerate(rows):
    for c, key in enumerate([("ancestral", REFERENCE_STEPS)] + [(name, k) for k in STEPS]):
        ax = axes[r, c]
        ax.axis("off")
        if c == 0 and r > 0:
            continue
        cell = cells[key]
        ax.imshow(grid(cell["images"][:16], nrow=4).permute(1, 2, 0))
        label = f"{key[0]} {key[1]}" + (" (reference)" if c == 0 else "")
        ax.set_title(f"{label}\n{score_name} {cell['score']:.2f}", fontsize=9)
plt.tight_layout()
plt.show()

# %%
for name in rows:
    plt.plot(STEPS, [cells[name, k]["score"] for k in STEPS], "o-", label=name)
plt.axhline(cells["ancestral", REFERENCE_STEPS]["score"], color="k", ls="--", label=f"ancestral {REFERENCE_STEPS}")
plt.xlabel("steps (model evaluations)")
plt.ylabel(score_name)
plt.legend()
plt.title("score per sampler and step count")
plt.show()

# %% [markdown]
# ## Bits per dimension
# The negative log-likelihood bound `L_0 + ... + L_T` (DDPM eq. 5, in bits per pixel on the
# 256-level grid), summed over every timestep of the chain (1000), on MNIST-test digits. The
# improved-DDPM toy learns the reverse variance; the DDPM toy's bound is taken with its fixed
# posterior variance (`fixed_small`). `layoutdiffuse.evaluation.bits_per_dim` is what
# `python -m layoutdiffuse evaluate --nll` runs.

# %%
improved, improved_source = toy("mnist_improved.json")
print("improved-DDPM toy:", improved_source)
test = mnist_test_images(improved.image_shape[-1], NLL_N)
nll = {}
for label, m in (("improved DDPM (learned variance)", improved), ("DDPM (fixed variance)", module)):
    start = time.perf_counter()
    nll[label] = bits_per_dim(m, test, batch_size=128)
    print(f"{label:>34}: {nll[label]['bits_per_dim']:.3f} bits/dim (± {nll[label]['bits_per_dim_stderr']}) on {NLL_N} test digits, "
          f"L_0 {nll[label]['decoder_L0_bpd']:.3f}, L_T {nll[label]['prior_LT_bpd']:.1e}  [{time.perf_counter() - start:.0f} s]")
assert all(torch.isfinite(torch.tensor(v["bits_per_dim"])) for v in nll.values())
