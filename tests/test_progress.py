"""The time budget of a training run: it stops on time and still writes its grid and checkpoint;
the budget-following cosine LR; the ETA and log lines of redirected output; the step bar."""
import json
import logging
import math
import re
from types import SimpleNamespace

import pytest
from pytorch_lightning.callbacks import Timer

from layoutdiffuse import experiment
from layoutdiffuse.experiment import build_datasets, build_loaders, build_module, build_trainer, read_checkpoint, train
from layoutdiffuse.training.progress import ProgressLog, StepProgressBar, format_seconds, training_fraction


def tiny_config(tmp_path, root, name, **trainer_args):
    config = json.loads(open("configs/mnist.json").read())
    config.update(expt_name=name, expt_dir=str(tmp_path))
    config["denoising_model"].update(base_channel=8, channel_mult=[1, 2], attn_levels=[1])
    config["data"].update(root=str(root), limit=24, batch_size=8, num_workers=0, image_size=16)
    config["diffusion"]["lr_scheduler"] = {"name": "cosine", "warmup_steps": 2}
    config["trainer_args"] = {"accelerator": "cpu", "limit_val_batches": 0, "logger": False, **trainer_args}
    config["callbacks"] = {"checkpoint": {"every_n_train_steps": 1000}, "images": {"every_n_train_steps": 0, "n": 4, "sampler": "dpm++", "steps": 3}}
    return config


def fit(config, *callbacks):
    loaders = build_loaders(config, build_datasets(config))
    module, trainer = build_module(config), build_trainer(config)
    trainer.callbacks.extend(callbacks)
    trainer.fit(module, loaders["train"])
    return module, trainer


def test_time_budget_stops_on_time_and_writes_its_grid(tmp_path, mnist_root):
    import pytorch_lightning as pl

    class Elapsed(pl.Callback):  # the budget timer's clock at each step's end
        seen = []

        def on_train_batch_end(self, trainer, *args):
            self.seen.append(next(c for c in trainer.callbacks if isinstance(c, Timer)).time_elapsed("train"))

    config = tiny_config(tmp_path, mnist_root, "budget", max_steps=-1, max_time={"seconds": 2})
    config["diffusion"]["lr_scheduler"]["warmup_steps"] = 0
    module, trainer = fit(config, Elapsed())
    steps = trainer.global_step
    assert steps == len(Elapsed.seen) >= 1
    assert all(e < 2.0 for e in Elapsed.seen[:-1]) and Elapsed.seen[-1] >= 2.0  # stopped at the first step end past the budget
    assert (tmp_path / "budget" / "images" / f"step_{steps:06d}.png").is_file()  # the final grid
    assert read_checkpoint(tmp_path / "budget" / "checkpoints" / "last.ckpt")["global_step"] == steps  # the final weights
    # the cosine followed the budget to its end: the whole budget used -> factor (1 + cos(pi)) / 2 = 0
    assert trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_budget_cosine_lr_matches_closed_form(tmp_path, mnist_root):
    """cosine without total_steps: lr(k) = lr0 (k + 1) / w for k < w, else lr0 (1 + cos(pi k / N)) / 2."""
    import pytorch_lightning as pl

    class Record(pl.Callback):
        lrs = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.lrs[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]

    n, w = 10, 2
    config = tiny_config(tmp_path, mnist_root, "lr", max_steps=n, enable_progress_bar=False)
    config["callbacks"] = {}
    module, _ = fit(config, Record())
    lr0 = module.optimizer_args["lr"]
    expected = {k: lr0 * ((k + 1) / w if k < w else 0.5 * (1 + math.cos(math.pi * k / n))) for k in range(n)}
    assert Record.lrs == pytest.approx(expected, rel=1e-9)


def test_training_fraction_takes_the_first_limit_to_end_the_run():
    timer = Timer(duration={"seconds": 120})
    timer.time_elapsed = lambda stage: 30.0
    timer.time_remaining = lambda stage: 90.0
    assert training_fraction(SimpleNamespace(max_steps=-1, global_step=7, callbacks=[timer])) == pytest.approx(0.25)
    assert training_fraction(SimpleNamespace(max_steps=20, global_step=10, callbacks=[timer])) == pytest.approx(0.5)
    assert training_fraction(SimpleNamespace(max_steps=100, global_step=10, callbacks=[timer])) == pytest.approx(0.25)
    assert training_fraction(SimpleNamespace(max_steps=-1, global_step=10, callbacks=[])) == 0.0
    assert training_fraction(None) == 0.0


def test_format_seconds():
    assert [format_seconds(s) for s in (5, 65, 3725.2, None, math.inf)] == ["0:05", "1:05", "1:02:05", "?", "?"]


def test_redirected_output_gets_an_eta_and_periodic_log_lines(tmp_path, mnist_root, caplog):
    """Not a terminal (pytest captures stderr): no bar; the ETA from the first steps, then lines."""
    config = tiny_config(tmp_path, mnist_root, "log", max_steps=12)
    config["callbacks"] = {}
    trainer = build_trainer(config)
    assert not any(isinstance(c, StepProgressBar) for c in trainer.callbacks)
    progress = next(c for c in trainer.callbacks if isinstance(c, ProgressLog))
    assert progress.periodic
    ticks = iter(range(1000))
    progress.clock, progress.every_s, progress.eta_after = lambda: float(next(ticks)), 2.0, 3  # one second per call
    loaders = build_loaders(config, build_datasets(config))
    with caplog.at_level(logging.INFO, logger="layoutdiffuse.training.progress"):
        trainer.fit(build_module(config), loaders["train"])
    lines = [r.getMessage() for r in caplog.records if r.name == "layoutdiffuse.training.progress"]
    assert lines[0] == "training until 12 steps"
    # clock: 0 at the start, step s ends at s; timed from step 1, so at step 4: 1 step/s, 8 steps left
    assert re.fullmatch(r"speed 1\.00 steps/s \(8 images/s\) over steps 1-4: ETA 0:08 left, training ends at about \d\d:\d\d:\d\d \(~12 steps\)", lines[1]), lines[1]
    periodic = [l for l in lines if l.startswith("step ")]
    assert [l.split(" |")[0] for l in periodic] == ["step 6/12", "step 8/12", "step 10/12", "step 12/12"]
    assert re.fullmatch(r"step 6/12 \| loss \d+\.\d{4} \| 1\.00 steps/s \(8 images/s\) \| 0:06 elapsed, 0:06 left", periodic[0]), periodic[0]
    assert lines[-1] == "trained 12 steps (96 images) in 0:12: max_steps reached"  # start 0 .. last step end 12


@pytest.mark.parametrize("limits", [{"max_steps": 6}, {"max_steps": -1, "max_time": {"seconds": 1}}], ids=["steps", "time"])
def test_progress_bar_counts_steps_and_never_a_negative_epoch(tmp_path, mnist_root, capsys, monkeypatch, limits):
    monkeypatch.setattr(experiment, "interactive", lambda: True)  # as in a terminal
    config = tiny_config(tmp_path, mnist_root, "bar", **limits)
    config["callbacks"] = {}
    module = train(config)
    assert any(isinstance(c, StepProgressBar) for c in module.trainer_ref.callbacks)
    captured = capsys.readouterr()
    text = captured.out + captured.err  # Lightning's tqdm writes to stdout
    assert "Epoch" not in text and not re.search(r"/-\d", text)
    assert "train (steps)" in text and "loss=" in text and "left=" in text
    if "max_time" not in limits:
        assert "6/6" in text
