"""Scale-out through the Lightning Trainer: a 2-process DDP training run on CPU (gloo) with gradient
checkpointing, gradient accumulation and EMA leaves both ranks with identical weights.

The test runs this file as a script with ``strategy="ddp"`` -- what the shipped configs use on
GPUs: Lightning starts rank 1 by re-running the script, so nothing is pickled. (``ddp_spawn``
pickles the LightningModule; the adapted diffusers model pickles, see
``LayoutDiffusersUNet.enable_gradient_checkpointing``.)
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


def main(out_dir: Path) -> None:
    """Train the tiny Stable-Diffusion-architecture model for 2 steps on 2 CPU processes; each rank
    writes the hash of its weights (denoiser + EMA) and of the frozen parts."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from layoutdiffuse.conditions import collate
    from layoutdiffuse.factory import build_module
    from test_latent import TinyLayoutCaptions, sd_config
    from tiny_sd import save_sd_folder

    torch.set_num_threads(1)
    folder = out_dir / "tiny-sd"
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and not folder.exists():
        save_sd_folder(folder)
    config = sd_config(folder, out_dir, ema_decay=0.9)
    config["adapt"]["gradient_checkpointing"] = True
    pl.seed_everything(0, verbose=False)  # as experiment.train does before building
    module = build_module(config)
    start = weights_hash(module)

    class RecordWeights(pl.Callback):
        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            record = {"hash": weights_hash(pl_module), "start": start, "world_size": trainer.world_size, "step": trainer.global_step,
                      "frozen": weights_hash(pl_module.autoencoder) + weights_hash(pl_module.text_encoder)}
            (out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))

    loader = DataLoader(TinyLayoutCaptions(length=8), batch_size=2, collate_fn=collate)  # Lightning adds a DistributedSampler
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=2, accumulate_grad_batches=2,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[RecordWeights()])
    trainer.fit(module, loader)


@pytest.mark.slow
def test_ddp_ranks_hold_identical_weights(tmp_path):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tiny_sd import save_sd_folder

    save_sd_folder(tmp_path / "tiny-sd")  # both ranks read the same foundation
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(Path(__file__)), str(tmp_path)], env=env, cwd=HERE.parent,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["step"] == 2 for r in ranks)
    assert ranks[0]["start"] == ranks[1]["start"]  # same initial weights (same foundation, seeded adaptor)
    assert ranks[0]["hash"] == ranks[1]["hash"] != ranks[0]["start"]  # trained, and in sync
    assert ranks[0]["frozen"] == ranks[1]["frozen"]


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main(Path(sys.argv[1]))
