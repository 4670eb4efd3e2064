"""Latent diffusion with foundation models: the frozen autoencoder, the latent cache, training and
sampling with text + layout guidance, checkpoints, loading foundations (diffusers folders and the
CompVis LDM checkpoint), and the shipped configs failing early without weights."""
from __future__ import annotations

import argparse
import copy
import json
import logging
import pathlib
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tiny_sd import (LDM_VQ, SD_SCHEDULER, box_layouts, masks, randomize, save_sd_folder,
                     tiny_sd)

from layoutdiffuse.config import ConfigError, validate
from layoutdiffuse.errors import UserError
from layoutdiffuse.conditions import collate
from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.experiment import load_checkpoint, read_checkpoint, train
from layoutdiffuse.autoencoder import Autoencoder, LatentCache
from layoutdiffuse.sd.schedules import diffusion_from_ldm, diffusion_from_scheduler
from layoutdiffuse.factory import build_module
from layoutdiffuse.sd.foundation import check_foundation_files, merge_diffusion, resolve_path
from layoutdiffuse.sd.ldm import (LDM_CELEBAHQ_256, convert_ldm_unet, convert_ldm_vq, load_ldm,
                                  unet_config_from_ldm, vq_config_from_ldm)

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 5
IMAGE = 16  # pixels; the tiny VAE downsamples by 2 -> 8x8 latents


class TinyLayoutCaptions(Dataset):
    """Random images with box layouts and captions, in the layout-dataset sample format."""

    collate = staticmethod(collate)
    class_names = [f"c{i}" for i in range(NUM_CLASSES)]

    def __init__(self, split: str = "train", image_size: int = IMAGE, length: int = 8, masks: bool = False):
        self.image_size, self.length, self.masks = image_size, length, masks
        self.seed = 0 if split == "train" else 1

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(1000 * self.seed + i)
        layout = box_layouts(4, NUM_CLASSES, seed=i)[i % 4]
        sample = {"image": torch.rand(3, self.image_size, self.image_size, generator=g) * 2 - 1,
                  "layout": layout[layout[:, 4] >= 0], "caption": ["a cat", "", "cat and cat"][i % 3]}
        if self.masks:
            sample["mask"] = torch.randint(0, NUM_CLASSES, (self.image_size, self.image_size), generator=g)
        return sample


if "tiny_layout_captions" not in DATASETS:
    DATASETS.register("tiny_layout_captions")(TinyLayoutCaptions)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return save_sd_folder(tmp_path_factory.mktemp("pretrained") / "tiny-sd")


def sd_config(folder: Path, tmp: Path | None = None, **diffusion) -> dict:
    return {
        "expt_name": "tiny_sd", "expt_dir": str(tmp or folder.parent), "seed": 0,
        "adapt": {"foundation": "stable_diffusion", "path": str(folder),
                  "layout": {"num_classes": NUM_CLASSES, "levels": [0, 1], "embed_dim": 8, "num_task_prompts": 4}},
        "diffusion": {"training": "LatentDDPMTraining", "ema_decay": 0.0, "optimizer": {"lr": 1e-3},
                      "sampling": {"sampler": "plms", "steps": 3, "guidance": 5.0}, **diffusion},
        "data": {"dataset": "tiny_layout_captions", "image_size": IMAGE, "batch_size": 2, "num_workers": 0},
        "trainer_args": {"max_steps": 2, "accelerator": "cpu", "limit_val_batches": 0, "enable_progress_bar": False,
                         "logger": False, "enable_model_summary": False},
        "callbacks": {"checkpoint": {"every_n_train_steps": 2}},
    }


def quiet_trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


# --- the autoencoder ---------------------------------------------------------------------------------

def test_kl_autoencoder_scales_samples_and_is_frozen():
    vae = tiny_sd()["vae"]
    enc = Autoencoder(vae, sample_posterior=False)
    x = torch.rand(2, 3, IMAGE, IMAGE) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        assert torch.equal(enc.encode(x), dist.mean * 0.18215)
        z = enc.encode(x)
        torch.testing.assert_close(enc.decode(z), vae.decode(z / 0.18215).sample)
    assert enc.latent_shape(IMAGE) == (4, 8, 8) and enc.scale_factor == 0.18215 and enc.upcast
    with pytest.raises(ValueError, match="divisible by the autoencoder's downsample factor 2"):
        enc.latent_shape(15)
    post = Autoencoder(vae)  # z ~ q(z|x), reproducible with a generator
    a, b = (post.encode(x, torch.Generator().manual_seed(0)) for _ in range(2))
    assert torch.equal(a, b) and not torch.allclose(a, enc.encode(x))
    enc.train()
    assert not enc.training and not vae.training and not any(p.requires_grad for p in enc.parameters())


def test_vq_autoencoder_uses_pre_quantisation_latents_and_quantises_on_decode():
    from diffusers import VQModel

    vq = VQModel(**LDM_VQ).eval()
    enc = Autoencoder(vq, scale_factor=1.0)
    x = torch.rand(2, 3, IMAGE, IMAGE) * 2 - 1
    with torch.no_grad():
        z = enc.encode(x)
        assert torch.equal(z, vq.encode(x).latents)
        assert torch.equal(enc.decode(z), vq.decode(z).sample)
    assert enc.latent_shape(256) == (3, 128, 128)


def test_latent_cache_reads_back_what_it_stored(tmp_path):
    enc = Autoencoder(tiny_sd()["vae"])
    cache = LatentCache(tmp_path, enc.fingerprint())
    x = torch.rand(3, 3, IMAGE, IMAGE) * 2 - 1
    first = cache.moments(x, enc)
    assert (cache.hits, cache.misses) == (0, 3) and len(list(tmp_path.rglob("*.safetensors"))) == 3
    again = cache.moments(x, enc)
    assert (cache.hits, cache.misses) == (3, 3) and torch.equal(first, again)
    torch.testing.assert_close(first, enc.moments(x))
    flipped = torch.cat([x[:1], x[1:2].flip(-1)])  # an augmented image misses
    cache.moments(flipped, enc)
    assert (cache.hits, cache.misses) == (4, 4)
    next(tmp_path.rglob("*.safetensors")).write_bytes(b"torn")  # a torn file is recomputed
    torch.testing.assert_close(cache.moments(x, enc), first)


# --- training ------------------------------------------------------------------------------------------

def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("train_mode,precision", [("all", "32-true"), ("freeze_backbone", "32-true"), ("all", "bf16-mixed")])
def test_training_updates_only_what_trains(sd_folder, train_mode, precision):
    config = sd_config(sd_folder, optimizer={"lr": 1e-3, "train": train_mode}, ema_decay=0.9)
    config["adapt"]["gradient_checkpointing"] = True
    module = build_module(config)
    vae, text, model = snapshot(module.autoencoder), snapshot(module.text_encoder), snapshot(module.model)
    loader = DataLoader(TinyLayoutCaptions(), batch_size=2, collate_fn=collate)
    quiet_trainer(max_steps=3, precision=precision).fit(module, loader)
    assert all(torch.equal(v, module.autoencoder.state_dict()[k]) for k, v in vae.items())
    assert all(torch.equal(v, module.text_encoder.state_dict()[k]) for k, v in text.items())
    after = module.model.state_dict()
    changed = {k for k, v in model.items() if not torch.equal(v, after[k])}
    unet = {k for k in model if k.startswith("unet.")}
    assert {k for k in changed if k.endswith(".gate")} and {k for k in changed if "proj_out" in k}
    if train_mode == "all":
        assert changed & unet
    else:
        assert not changed & unet
    assert not module.autoencoder.training and not module.text_encoder.training and module.model.training
    assert torch.isfinite(module.ema.module.task_prompt["context"].weight).all()


def test_adapted_module_pickles_for_spawned_processes(sd_folder):
    """ddp_spawn / notebooks with spawn pickle the module: hooks, processors and the gradient-checkpointing
    function must survive, and the copy must compute the same function."""
    import pickle

    config = sd_config(sd_folder)
    config["adapt"]["gradient_checkpointing"] = True
    module = build_module(config)
    clone = pickle.loads(pickle.dumps(module))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 900])
    cond = module.encode_condition({"layout": box_layouts(2, NUM_CLASSES), "caption": ["a cat", ""]}, 2)
    with torch.no_grad():
        assert torch.equal(clone.model(x, t, cond), module.model(x, t, cond))
    assert clone.model.unet.is_gradient_checkpointing


def test_guidance_batches_condition_and_negative_prompt(sd_folder):
    module = build_module(sd_config(sd_folder))
    seen = []
    module.model.register_forward_pre_hook(lambda m, args: seen.append(args[2]))
    layout = box_layouts(4, NUM_CLASSES, seed=3)[[1, 3]]  # 1 and 3 objects
    cond = {"layout": layout, "caption": ["a cat", "cat"]}
    images = module.sample(2, cond, generator=torch.Generator().manual_seed(0), negative_prompt="blurry", steps=2)
    assert images.shape == (2, 3, IMAGE, IMAGE) and images.abs().max() <= 1
    both = seen[0]
    assert both["context"].shape[0] == 4
    torch.testing.assert_close(both["context"][:2], module.encode_text(["a cat", "cat"]))
    torch.testing.assert_close(both["context"][2:], module.encode_text(["blurry", "blurry"]))
    assert (both["layout"][2:, :, 4] < 0).all() and torch.equal(both["layout"][:2, : layout.shape[1]], layout)
    seen.clear()
    plain = module.sample(2, cond, generator=torch.Generator().manual_seed(0), steps=2, guidance=1.0)
    assert seen[0]["context"].shape[0] == 2 and not torch.allclose(plain, images)
    latents = module.sample(2, cond, generator=torch.Generator().manual_seed(0), steps=2, decode=False)
    assert latents.shape == (2, *module.image_shape)


def test_dropped_captions_become_the_empty_prompt(sd_folder):
    module = build_module(sd_config(sd_folder))
    cond = module.encode_condition({"caption": ["a cat", ""], "layout": box_layouts(2, NUM_CLASSES)}, 2)
    assert "caption" not in cond and cond["context"].shape == (2, 8, 32)
    torch.testing.assert_close(cond["context"][1], module.encode_condition(None, 1)["context"][0])
    with pytest.raises(ValueError, match="3 captions for a batch of 2"):
        module.encode_condition({"caption": ["a", "b", "c"]}, 2)


def test_checkpoint_round_trip_through_the_experiment(sd_folder, tmp_path, caplog):
    config = sd_config(sd_folder, tmp_path, ema_decay=0.9)
    config["callbacks"]["images"] = {"every_n_train_steps": 2, "n": 2, "steps": 2}  # sample grids: decoded latents
    validate(config)
    trained = train(config)
    path = tmp_path / "tiny_sd" / "checkpoints" / "last.ckpt"
    ckpt = read_checkpoint(path)
    assert not any(k.startswith(("autoencoder.", "text_encoder.")) for k in ckpt["state_dict"])
    assert (tmp_path / "tiny_sd" / "images" / "step_000002.png").exists()
    assert ckpt["layoutdiffuse"]["model"]["unet_class"] == "UNet2DConditionModel"
    loaded = load_checkpoint(path)
    a, b = trained.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].device)) for k in a)
    cond = {"layout": box_layouts(2, NUM_CLASSES, seed=4), "caption": ["a cat", ""]}
    torch.testing.assert_close(loaded.sample(2, cond, generator=torch.Generator().manual_seed(1), steps=2),
                               trained.sample(2, cond, generator=torch.Generator().manual_seed(1), steps=2))
    # a checkpoint state with a missing and an unexpected key is reported by name
    state = dict(ckpt["state_dict"])
    state.pop("model.adaptor.prompt_table.weight")
    state["model.unet.bogus"] = torch.zeros(1)
    with pytest.raises(KeyError, match=r"missing adaptor keys \[adaptor.prompt_table.weight\].*unexpected foundation keys \[unet.bogus\]"):
        loaded.model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})


# --- foundations: schedules, files, the CompVis LDM checkpoint -------------------------------------------

def test_noise_schedule_comes_from_the_foundation(sd_folder, tmp_path, caplog):
    assert diffusion_from_scheduler(SD_SCHEDULER) == {"schedule": "scaled_linear", "num_timesteps": 1000, "prediction": "eps",
                                                      "beta_start": 0.00085, "beta_end": 0.012}
    assert diffusion_from_scheduler({**SD_SCHEDULER, "prediction_type": "v_prediction"})["prediction"] == "v"
    celeb = diffusion_from_ldm(LDM_CELEBAHQ_256["model"]["params"])
    assert celeb == {"schedule": "scaled_linear", "num_timesteps": 1000, "prediction": "eps", "beta_start": 0.0015, "beta_end": 0.0195}
    with caplog.at_level(logging.WARNING):
        merged = merge_diffusion(celeb, {"prediction": "v"})
    assert merged["prediction"] == "v" and "differs from the foundation's 'eps'" in caplog.text
    v_folder = save_sd_folder(tmp_path / "v", scheduler={**SD_SCHEDULER, "prediction_type": "v_prediction"})
    assert build_module(sd_config(v_folder)).diffusion.prediction == "v"


@pytest.mark.parametrize("name", ["cocostuff_sd15", "cocostuff_sd21", "vg", "cocostuff", "celebmask"])
def test_shipped_configs_fail_early_naming_the_missing_weights(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LAYOUTDIFFUSE_DATA", str(tmp_path))
    config = json.loads((REPO / "configs" / f"{name}.json").read_text())
    validate(config)
    folder = resolve_path(config["adapt"]["path"])
    assert folder.parent == tmp_path / "pretrained"
    expected = "unet/diffusion_pytorch_model.safetensors" if config["adapt"]["foundation"] == "stable_diffusion" else "model.ckpt"
    with pytest.raises(FileNotFoundError, match=f"weights file .*not found: {folder / expected}.*download_pretrained_models.sh"):
        build_module(config)
    folder.mkdir(parents=True)
    if config["adapt"]["foundation"] == "stable_diffusion":  # the first missing file is named
        (folder / "unet").mkdir()
        (folder / "unet" / "config.json").write_text("{}")
        with pytest.raises(FileNotFoundError, match="unet weights file not found: .*diffusion_pytorch_model.safetensors"):
            check_foundation_files("stable_diffusion", folder)


def test_foundation_config_schema(sd_folder):
    config = sd_config(sd_folder)
    validate(config)
    for change, message in (({"foundation": "sdxl"}, "unknown foundation 'sdxl'; choose one of: stable_diffusion, ldm"),
                            ({"pathh": "x"}, "unknown config key 'adapt.pathh'"),
                            ({"layout": {"levels": [1]}}, "missing 'adapt.layout.num_classes'"),
                            ({"layout": {"num_classes": 3, "level": [1]}}, "unknown config key 'adapt.layout.level'")):
        bad = copy.deepcopy(config)
        bad["adapt"].update(change)
        with pytest.raises(ConfigError, match=message):
            validate(bad)
    old_style = {**copy.deepcopy(config), "adapt": {"foundation_ckpt": "x.ckpt", "layout": {"num_classes": 3}}}
    validate(old_style)  # the pixel-space foundation_ckpt form is unchanged
    bad = copy.deepcopy(config)
    bad["diffusion"]["training"] = "DDPMTraining"
    with pytest.raises(ConfigError, match="use LatentDDPMTraining"):
        build_module(bad)


def test_single_file_weights_need_a_local_config_folder(tmp_path):
    (tmp_path / "sd.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="need adapt.config: a local diffusers folder"):
        check_foundation_files("stable_diffusion", tmp_path / "sd.safetensors")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        check_foundation_files("stable_diffusion", tmp_path / "missing.ckpt", config=tmp_path)


# A tiny LDM with the CompVis layout (GroupNorm(32) everywhere, as LDM builds it)
TINY_LDM = {"linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "scale_factor": 1.0,
            "unet_config": {"params": {"image_size": 8, "in_channels": 3, "out_channels": 3, "model_channels": 32,
                                       "attention_resolutions": [2, 4], "num_res_blocks": 1, "channel_mult": [1, 2, 2],
                                       "num_head_channels": 16}},
            "first_stage_config": {"params": {"embed_dim": 3, "n_embed": 16, "ddconfig": {
                "double_z": False, "z_channels": 3, "resolution": 16, "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2],
                "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}},
            "cond_stage_config": "__is_unconditional__"}


def to_ldm_unet(sd: dict, cfg: dict) -> dict:
    """A diffusers UNet2DModel state dict in the openai UNetModel layout (naive, written from that layout)."""
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    out, n, per = {}, len(cfg["block_out_channels"]), cfg["layers_per_block"]
    hd = cfg["attention_head_dim"]

    def resnet(src, dst):
        for k, v in sd.items():
            if k.startswith(src + "."):
                part, leaf = k[len(src) + 1:].split(".", 1)
                out[f"{dst}.{res[part]}.{leaf}"] = v

    def attention(src, dst):
        out[f"{dst}.norm.weight"], out[f"{dst}.norm.bias"] = sd[f"{src}.group_norm.weight"], sd[f"{src}.group_norm.bias"]
        c = sd[f"{src}.to_q.weight"].shape[0]
        w = [sd[f"{src}.to_{x}.weight"].reshape(c // hd, hd, c) for x in "qkv"]
        b = [sd[f"{src}.to_{x}.bias"].reshape(c // hd, hd) for x in "qkv"]
        out[f"{dst}.qkv.weight"] = torch.stack(w, 1).reshape(3 * c, c, 1)  # per head: q, k, v (QKVAttentionLegacy)
        out[f"{dst}.qkv.bias"] = torch.stack(b, 1).reshape(3 * c)
        out[f"{dst}.proj_out.weight"] = sd[f"{src}.to_out.0.weight"][..., None]
        out[f"{dst}.proj_out.bias"] = sd[f"{src}.to_out.0.bias"]

    for a, b in (("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
                 ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out"), ("out.2", "conv_out")):
        out[f"{a}.weight"], out[f"{a}.bias"] = sd[f"{b}.weight"], sd[f"{b}.bias"]
    attn = [t.startswith("Attn") for t in cfg["down_block_types"]]
    for level in range(n):
        for j in range(per):
            i = 1 + level * (per + 1) + j
            resnet(f"down_blocks.{level}.resnets.{j}", f"input_blocks.{i}.0")
            if attn[level]:
                attention(f"down_blocks.{level}.attentions.{j}", f"input_blocks.{i}.1")
        if level < n - 1:
            for leaf in ("weight", "bias"):
                out[f"input_blocks.{1 + level * (per + 1) + per}.0.op.{leaf}"] = sd[f"down_blocks.{level}.downsamplers.0.conv.{leaf}"]
    resnet("mid_block.resnets.0", "middle_block.0")
    attention("mid_block.attentions.0", "middle_block.1")
    resnet("mid_block.resnets.1", "middle_block.2")
    for up in range(n):
        level = n - 1 - up
        for j in range(per + 1):
            i = up * (per + 1) + j
            resnet(f"up_blocks.{up}.resnets.{j}", f"output_blocks.{i}.0")
            if attn[level]:
                attention(f"up_blocks.{up}.attentions.{j}", f"output_blocks.{i}.1")
            if level and j == per:
                for leaf in ("weight", "bias"):
                    out[f"output_blocks.{i}.{2 if attn[level] else 1}.conv.{leaf}"] = sd[f"up_blocks.{up}.upsamplers.0.conv.{leaf}"]
    return out


def to_ldm_vq(sd: dict, cfg: dict) -> dict:
    """A diffusers VQModel state dict in the taming / LDM autoencoder layout (naive)."""
    n = len(cfg["block_out_channels"])
    out = {}
    for k, v in sd.items():
        new = k.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        new = new.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        if "mid_block.attentions.0" in new:
            new = new.replace("mid_block.attentions.0", "mid.attn_1").replace("group_norm", "norm")
            new = new.replace("to_q", "q").replace("to_k", "k").replace("to_v", "v").replace("to_out.0", "proj_out")
            if v.ndim == 2:
                v = v[..., None, None]
        for i in range(n):
            new = new.replace(f"encoder.down_blocks.{i}.resnets", f"encoder.down.{i}.block")
            new = new.replace(f"encoder.down_blocks.{i}.downsamplers.0", f"encoder.down.{i}.downsample")
            new = new.replace(f"decoder.up_blocks.{i}.resnets", f"decoder.up.{n - 1 - i}.block")
            new = new.replace(f"decoder.up_blocks.{i}.upsamplers.0", f"decoder.up.{n - 1 - i}.upsample")
        out[new] = v
    return out


class Payload:
    """An object of a class outside the data-container libraries: reading a checkpoint holding it is refused."""

    def __init__(self):
        self.payload = {"monitor": "val/loss"}


@pytest.fixture(scope="module")
def ldm_folder(tmp_path_factory):
    """A CompVis-layout LDM folder (model.ckpt + config.yaml) and the diffusers models it holds."""
    import yaml
    from diffusers import UNet2DModel, VQModel

    unet_cfg = unet_config_from_ldm(TINY_LDM["unet_config"]["params"])
    vq_cfg = vq_config_from_ldm(TINY_LDM["first_stage_config"]["params"], 1.0)
    unet, vq = randomize(UNet2DModel(**unet_cfg), 1).eval(), randomize(VQModel(**vq_cfg), 2, scale=0.05).eval()
    ema = {k: v for k, v in to_ldm_unet(unet.state_dict(), unet_cfg).items()}
    state = {f"model.diffusion_model.{k}": torch.zeros_like(v) for k, v in ema.items()}  # live weights: not what LDM samples with
    state |= {"model_ema." + f"diffusion_model.{k}".replace(".", ""): v for k, v in ema.items()}
    state |= {"model_ema.num_updates": torch.tensor(10), "betas": torch.rand(1000), "first_stage_model.loss.logvar": torch.zeros(())}
    state |= {f"first_stage_model.{k}": v for k, v in to_ldm_vq(vq.state_dict(), vq_cfg).items()}
    folder = tmp_path_factory.mktemp("pretrained") / "ldm-tiny"
    folder.mkdir()
    # the non-tensor objects a Lightning checkpoint pickles (hyper-parameter containers) are read as inert stand-ins
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": argparse.Namespace(lr=1e-4), "path": pathlib.PurePosixPath("x")},
               folder / "model.ckpt")
    (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                                                                  "params": TINY_LDM}}))
    return folder, unet, vq, unet_cfg, vq_cfg


def test_foundation_kinds_are_one_class_each_and_recognise_their_folders(tmp_path):
    from layoutdiffuse.sd.foundation import FOUNDATION_KINDS, detect_kind, foundation_kind
    from layoutdiffuse.sd.spec import FOUNDATIONS

    assert set(FOUNDATION_KINDS) == set(FOUNDATIONS)
    assert {name: kind.downscale for name, kind in FOUNDATION_KINDS.items()} == {"stable_diffusion": 8, "ldm_text": 8, "ldm": 4}
    assert all("download" in kind.download_hint or "folder" in kind.download_hint for kind in FOUNDATION_KINDS.values())
    assert detect_kind(tmp_path, "UNet2DModel").name == "ldm"
    assert detect_kind(tmp_path, "UNet2DConditionModel").name == "stable_diffusion"
    (tmp_path / "bert").mkdir()
    assert detect_kind(tmp_path, "UNet2DConditionModel").name == "ldm_text"
    with pytest.raises(UserError, match="unknown foundation 'sdxl'; choose one of: stable_diffusion, ldm"):
        foundation_kind("sdxl")


def test_ldm_conversion_inverts_the_compvis_layout(ldm_folder):
    _, unet, vq, unet_cfg, vq_cfg = ldm_folder
    ldm = to_ldm_unet(unet.state_dict(), unet_cfg)
    back = convert_ldm_unet(ldm, unet_cfg)
    assert back.keys() == unet.state_dict().keys() and all(torch.equal(back[k], v) for k, v in unet.state_dict().items())
    back = convert_ldm_vq(to_ldm_vq(vq.state_dict(), vq_cfg), vq_cfg)
    assert back.keys() == vq.state_dict().keys() and all(torch.equal(back[k], v) for k, v in vq.state_dict().items())
    with pytest.raises(KeyError, match="does not use.*extra.weight"):
        convert_ldm_unet({**ldm, "extra.weight": torch.zeros(1)}, unet_cfg)
    assert unet_config_from_ldm(LDM_CELEBAHQ_256["model"]["params"]["unet_config"]["params"])["block_out_channels"] == [224, 448, 672, 896]


def test_ldm_checkpoint_loads_without_executing_code(ldm_folder):
    folder, unet, vq, _, _ = ldm_folder
    loaded_unet, loaded_vq, diffusion, scale = load_ldm(folder)
    assert scale == 1.0 and diffusion["schedule"] == "scaled_linear"
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.equal(loaded_unet(x, t).sample, unet(x, t).sample)  # the EMA weights, not the zeroed live ones
        img = torch.rand(1, 3, 16, 16) * 2 - 1
        assert torch.equal(loaded_vq(img).sample, vq(img).sample)


def test_ldm_checkpoint_pickling_other_objects_is_refused_by_name(ldm_folder, tmp_path):
    state = torch.load(ldm_folder[0] / "model.ckpt", weights_only=False)
    torch.save({**state, "callbacks": {"ckpt": Payload()}}, tmp_path / "model.ckpt")
    with pytest.raises(UserError, match=r"refused to unpickle \['test_latent.Payload'\]"):
        load_ldm(tmp_path / "model.ckpt")


def test_ldm_mask_layout_training_step(ldm_folder):
    folder = ldm_folder[0]
    config = sd_config(folder)
    config["adapt"] = {"foundation": "ldm", "path": str(folder),
                       "layout": {"num_classes": NUM_CLASSES, "levels": [1, 2], "embed_dim": 8, "num_task_prompts": 4, "mask": True}}
    module = build_module(config)
    assert module.image_shape == (3, 8, 8) and module.text_encoder is None and module.autoencoder.scale_factor == 1.0
    before = snapshot(module.model)
    loader = DataLoader(TinyLayoutCaptions(masks=True), batch_size=2, collate_fn=collate)
    quiet_trainer(max_steps=2).fit(module, loader)
    after = module.model.state_dict()
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if k.endswith("task_prompt.mid_block_attentions_0.gate"))
    images = module.sample(2, {"mask": masks(2, IMAGE, NUM_CLASSES)}, generator=torch.Generator().manual_seed(0), steps=2)
    assert images.shape == (2, 3, IMAGE, IMAGE)
    with pytest.raises(ValueError, match="negative_prompt needs a text foundation"):
        module.sample(1, None, negative_prompt="x", steps=2)
