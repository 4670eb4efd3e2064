"""Timestep samplers (uniform, loss-second-moment) and DDIMTraining's use of them, resume included."""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch
from torch import nn

from layoutdiffuse.diffusion.resample import LossSecondMomentResampler, UniformSampler, make_timestep_sampler

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (tests/conftest.py)


class RefHistory:
    """Independent reference: a deque of the last ``h`` losses per timestep."""

    def __init__(self, num_t, h=10, uniform=0.001):
        self.q = [deque(maxlen=h) for _ in range(num_t)]
        self.h, self.uniform, self.num_t = h, uniform, num_t

    def update(self, t, losses):
        for s, l in zip(t, losses):
            self.q[s].append(float(l))

    def probabilities(self):
        if any(len(q) < self.h for q in self.q):
            return np.full(self.num_t, 1 / self.num_t)
        w = np.array([np.sqrt(np.mean(np.square(list(q)))) for q in self.q])
        return (1 - self.uniform) * w / w.sum() + self.uniform / self.num_t


def test_uniform_sampler():
    s = make_timestep_sampler("uniform", 50)
    assert isinstance(s, UniformSampler)
    t, w = s.sample(1000, "cpu", torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < 50 and torch.equal(w, torch.ones(1000))
    t2, _ = s.sample(1000, "cpu", torch.Generator().manual_seed(0))
    assert torch.equal(t, t2)
    assert s.state_dict() == {}


def test_second_moment_probabilities_follow_the_loss_history():
    num_t = 20
    s = LossSecondMomentResampler(num_t)
    ref = RefHistory(num_t)
    rng = np.random.default_rng(0)
    scale = np.linspace(0.1, 3.0, num_t)  # loss magnitude grows with t
    # every timestep but the last gets a full history: still uniform
    for _ in range(10):
        t = np.arange(num_t - 1)
        losses = scale[t] * rng.uniform(0.5, 1.5, len(t))
        s.update(torch.from_numpy(t), torch.from_numpy(losses))
        ref.update(t, losses)
    assert not s.warmed_up()
    np.testing.assert_allclose(s.probabilities().numpy(), np.full(num_t, 1 / num_t))
    # random batches with repeated timesteps; histories roll over
    for _ in range(40):
        t = rng.integers(0, num_t, 64)
        losses = scale[t] * rng.uniform(0.5, 1.5, 64)
        s.update(torch.from_numpy(t), torch.from_numpy(losses).float())
        ref.update(t, losses.astype(np.float32))
    assert s.warmed_up()
    for k in range(num_t):
        np.testing.assert_allclose(s.loss_history[k].numpy(), np.array(ref.q[k]), rtol=1e-7)
    p = s.probabilities().numpy()
    np.testing.assert_allclose(p, ref.probabilities(), rtol=1e-10)
    assert p.min() >= 0.001 / num_t and p[-1] > p[0]

    # draws follow p, and weights are 1 / (T p(t)): E_p[w(t) L_t] = mean_t L_t
    t, w = s.sample(200_000, "cpu", torch.Generator().manual_seed(1))
    freq = np.bincount(t.numpy(), minlength=num_t) / len(t)
    np.testing.assert_allclose(freq, p, atol=4e-3)
    np.testing.assert_allclose(w.numpy(), 1 / (num_t * p[t.numpy()]), rtol=1e-6)
    losses_t = scale
    assert abs((w.double().numpy() * losses_t[t.numpy()]).mean() - losses_t.mean()) < 0.03


def test_update_accepts_gathered_tensors():
    """(world, B) tensors as LightningModule.all_gather returns them."""
    a, b = LossSecondMomentResampler(4, history_per_term=2), LossSecondMomentResampler(4, history_per_term=2)
    t = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    losses = torch.arange(8.0).view(2, 4)
    a.update(t, losses)
    b.update(t.reshape(-1), losses.reshape(-1))
    assert torch.equal(a.loss_history, b.loss_history) and a.warmed_up()
    with pytest.raises(ValueError, match="same length"):
        a.update(torch.tensor([0, 1]), torch.tensor([1.0]))


def test_state_round_trips_through_torch_load_weights_only(tmp_path):
    s = LossSecondMomentResampler(30, history_per_term=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        t = torch.randint(0, 30, (16,), generator=g)
        s.update(t, torch.rand(16, generator=g) * (t + 1))
    assert s.warmed_up()
    torch.save(s.state_dict(), tmp_path / "sampler.pt")
    state = torch.load(tmp_path / "sampler.pt", weights_only=True)
    r = LossSecondMomentResampler(30, history_per_term=3)
    r.load_state_dict(state)
    assert torch.equal(r.probabilities(), s.probabilities())
    ta, wa = s.sample(64, "cpu", torch.Generator().manual_seed(5))
    tb, wb = r.sample(64, "cpu", torch.Generator().manual_seed(5))
    assert torch.equal(ta, tb) and torch.equal(wa, wb)
    with pytest.raises(ValueError, match="expected shape \\(30, 4\\)"):
        LossSecondMomentResampler(30, history_per_term=4).load_state_dict(state)
    with pytest.raises(KeyError, match="loss_counts"):
        r.load_state_dict({"loss_history": state["loss_history"]})
    with pytest.raises(KeyError, match="choose one of: loss-second-moment, uniform"):
        make_timestep_sampler("importance", 10)


# --- DDIMTraining ------------------------------------------------------------------------------------
class TinyModel(nn.Module):
    """``(B, 1, H, W) -> (B, 2, H, W)``: prediction and variance channels."""

    in_channel, out_channel = 1, 2

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x, t, cond=None):
        tt = (t.float() / 10).view(-1, 1, 1, 1).expand_as(x)
        return self.conv(torch.cat([x, tt], 1))


def pixels(n=16, size=4):
    g = torch.Generator().manual_seed(0)
    return list(torch.randint(0, 256, (n, 1, size, size), generator=g).float() / 127.5 - 1)


def test_ddim_training_defaults_and_errors():
    from layoutdiffuse.training.ddim import DDIMTraining

    m = DDIMTraining(TinyModel(), image_shape=(1, 4, 4))
    assert m.diffusion.schedule == "cosine" and m.diffusion.learn_sigma and m.diffusion.num_timesteps == 1000
    assert isinstance(m.timestep_sampler, LossSecondMomentResampler) and m.lambda_vlb == 0.001
    assert m.sampling_args["sampler"] == "ancestral"
    m = DDIMTraining(TinyModel(), diffusion={"num_timesteps": 50}, timestep_sampler="uniform")
    assert m.diffusion.schedule == "cosine" and m.diffusion.num_timesteps == 50 and isinstance(m.timestep_sampler, UniformSampler)
    with pytest.raises(ValueError, match="learn_sigma"):
        DDIMTraining(TinyModel(), diffusion={"learn_sigma": False})
    bad = TinyModel()
    bad.out_channel = 1
    with pytest.raises(ValueError, match="out_channel = 2 \\* in_channel = 2"):
        DDIMTraining(bad)


def test_ddim_training_step_learns_the_resampler_and_checkpoints_it():
    from layoutdiffuse.training.ddim import DDIMTraining

    m = DDIMTraining(TinyModel(), diffusion={"num_timesteps": 8}, timestep_sampler_options={"history_per_term": 2}, image_shape=(1, 4, 4))
    batch = torch.stack(pixels(16))
    for step in range(4):
        out = m.training_step(batch, step)
        assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
        out["loss"].backward()
    assert int(m.timestep_sampler.loss_counts.sum()) == 16  # 64 losses, 2 kept for each of 8 timesteps
    ckpt: dict = {}
    m.on_save_checkpoint(ckpt)
    fresh = DDIMTraining(TinyModel(), diffusion={"num_timesteps": 8}, timestep_sampler_options={"history_per_term": 2})
    fresh.on_load_checkpoint(ckpt)
    assert torch.equal(fresh.timestep_sampler.loss_history, m.timestep_sampler.loss_history)
    images = m.sample(2, steps=4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 4, 4) and torch.isfinite(images).all()


def test_resumed_training_draws_the_timesteps_of_an_uninterrupted_run(tmp_path):
    """Lightning resume restores the resampler: the timesteps drawn after resuming are those of a
    run that never stopped (the per-step generator depends on (seed, global_step, rank) only)."""
    import pytorch_lightning as pl

    from layoutdiffuse.training.ddim import DDIMTraining

    class Recording(DDIMTraining):
        def after_losses(self, t, losses):
            self.drawn.append(t.clone())
            super().after_losses(t, losses)

    def module():
        m = Recording(TinyModel(), diffusion={"num_timesteps": 4}, timestep_sampler_options={"history_per_term": 2},
                      image_shape=(1, 4, 4), ema_decay=0.0, optimizer={"lr": 1e-2})
        m.drawn = []
        return m

    def trainer(epochs):
        return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)

    loader = torch.utils.data.DataLoader(pixels(16), batch_size=4, shuffle=False)
    straight = module()
    trainer(4).fit(straight, loader)
    first = module()
    t1 = trainer(2)
    t1.fit(first, loader)
    t1.save_checkpoint(tmp_path / "half.ckpt")
    assert first.timestep_sampler.warmed_up()
    ckpt = torch.load(tmp_path / "half.ckpt", weights_only=True)
    assert torch.equal(ckpt["timestep_sampler"]["loss_history"], first.timestep_sampler.loss_history)
    resumed = module()
    trainer(4).fit(resumed, loader, ckpt_path=tmp_path / "half.ckpt")
    assert len(straight.drawn) == 16 and len(resumed.drawn) == 8
    assert straight.timestep_sampler.warmed_up()
    for a, b in zip(straight.drawn[8:], resumed.drawn):
        assert torch.equal(a, b)
    torch.testing.assert_close(resumed.timestep_sampler.loss_history, straight.timestep_sampler.loss_history)
