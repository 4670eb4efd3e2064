"""Loading the original LayoutDiffuse release's checkpoints, exactly.

Reads ../shared/release (tiny checkpoints in the release's format with the release code's own
outputs, and the key manifests of the five published models); skipped when it is absent.
Tolerances reached (2-core CPU, float32): eps of the batch of four within 1.7e-6 (item by item) of the release's
scale, whole 20-step PLMS runs within ~7e-7; asserted at 1e-4.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
from safetensors.torch import load_file  # noqa: E402

from layoutdiffuse.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = [REPO.parent / "shared" / "release", Path("/work/shared/release")]
RELEASE = next((p for p in CANDIDATES if (p / "README.md").is_file()), None)
pytestmark = pytest.mark.skipif(RELEASE is None, reason="release fixtures not found: ../shared/release beside the repository "
                                                          "(or /work/shared/release) holds them")
FAMILIES = ("sd_layout", "ldm_text_layout", "celeb_mask")
MANIFESTS = ("cocostuff_SD1_5", "cocostuff_SD2_1", "cocostuff", "vg", "celeb_mask")
#: parameters of the real foundations' UNets (diffusers configs of layoutdiffuse.release.published, counted on meta tensors)
FOUNDATION_PARAMS = {"cocostuff_SD1_5": 859_520_964, "cocostuff_SD2_1": 865_910_724, "cocostuff": 872_300_484,
                     "vg": 872_300_484, "celeb_mask": 274_056_163}
TOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def cond_of(io: dict[str, torch.Tensor], items: slice = slice(None)) -> dict[str, torch.Tensor]:
    if "mask" in io:
        return {"mask": io["mask"][items]}
    return {"layout": io["layout"][items], "context": io["text"][items]}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    from layoutdiffuse.release import load_release_unet, read_release_config

    name = request.param
    release = read_release_config(RELEASE / f"{name}.json")
    return name, release, load_release_unet(RELEASE / f"{name}.ckpt", release)


# --- the tiny release models, exactly --------------------------------------------------------------

def test_eps_of_the_batch_of_four_matches_the_release(family):
    name, _, model = family
    io = load_file(str(RELEASE / f"{name}.io.safetensors"))
    with torch.no_grad():
        eps = model(io["x"], io["t"], cond_of(io))  # one batch; the release ran the items one by one
    assert eps.shape == io["eps"].shape
    for i in range(4):  # overlapping boxes; the empty layout; a one-cell box on the border; two boxes of one class
        assert rel_err(eps[i], io["eps"][i]) < TOL, (name, i)


def test_whole_plms_run_matches_the_release(family):
    from layoutdiffuse.diffusion import GaussianDiffusion, classifier_free_guidance, conditioned, make_sampler
    from layoutdiffuse.release import diffusion_config

    name, release, model = family
    io = load_file(str(RELEASE / f"{name}.io.safetensors"))
    run = load_file(str(RELEASE / f"{name}.plms.safetensors"))
    diffusion = GaussianDiffusion(**diffusion_config(release))
    sampler = make_sampler("plms", diffusion, steps=20, spacing="ldm", warmup="improved_euler")
    assert sampler.timesteps.tolist() == run["timesteps"].tolist()
    scale = float(run["guidance_scale"])
    if "mask" in io:
        model_fn = conditioned(model, cond_of(io, slice(0, 1)))
        assert scale == 1
    else:
        k = int(io["counts"][0])
        cond = {"layout": io["layout"][:1, :k], "context": io["text"][:1]}
        uncond = {"layout": io["layout"].new_zeros(1, 0, 5), "context": run["negative_text"]}
        model_fn = classifier_free_guidance(model, cond, uncond, scale)
    with torch.no_grad():
        x0 = sampler.sample(model_fn, tuple(run["x_T"].shape), x_T=run["x_T"])
    assert rel_err(x0, run["x_0"]) < TOL


def test_converted_export_loads_with_load_checkpoint(tmp_path):
    from layoutdiffuse.cli import main
    from layoutdiffuse.experiment import load_checkpoint

    name = "ldm_text_layout"
    out = tmp_path / "converted.safetensors"
    assert main(["convert-release", str(RELEASE / f"{name}.ckpt"), "--release-config", str(RELEASE / f"{name}.json"),
                 "--out", str(out)]) == 0
    module = load_checkpoint(out)
    io = load_file(str(RELEASE / f"{name}.io.safetensors"))
    with torch.no_grad():
        eps = module.model(io["x"], io["t"], cond_of(io))
    assert rel_err(eps, io["eps"]) < TOL
    assert module.diffusion.num_timesteps == 1000
    assert module.sampling_args["sampler"] == "plms" and module.sampling_args["spacing"] == "ldm"
    assert module.class_names == [str(i) for i in range(7)]


# --- the published models' key manifests ------------------------------------------------------------

def manifest(name: str) -> dict[str, torch.Tensor]:
    """A shape-only (meta) state dict with the keys and shapes of a published checkpoint's UNet."""
    out = {}
    for line in (RELEASE / f"{name}.keys.tsv").read_text().splitlines():
        key, shape = line.split("\t")
        out[key] = torch.empty([int(s) for s in shape.split("x")], device="meta")
    return out


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_key_of_a_published_checkpoint_maps_once_onto_its_foundation(name):
    import diffusers

    from layoutdiffuse.release import architecture, build_release_unet, convert_release_unet, read_release_config
    from layoutdiffuse.release.export import check_foundation_unet
    from layoutdiffuse.release.published import foundation_unet, release_config
    from layoutdiffuse.sd.layout_unet import plain_config

    state = manifest(name)
    arch = architecture(read_release_config(release_config(name)))
    cls, config = foundation_unet(name)
    with torch.device("meta"):
        found = getattr(diffusers, cls).from_config(config)
    check_foundation_unet(arch["unet"], plain_config(found.config), Path(name))  # same architecture as the real foundation
    fitted = {**arch, "unet": plain_config(found.config)}
    model = build_release_unet(fitted, device="meta")
    converted = convert_release_unet(state, fitted, model)  # raises unless every model key is filled, shapes equal
    assert set(converted) == set(model.state_dict())
    assert sum(p.numel() for p in model.unet.parameters()) == sum(p.numel() for p in found.parameters()) == FOUNDATION_PARAMS[name]
    # every release tensor used once: the release's numbers of values, less its copies of the shared prompt table
    copies = [k for k in state if k.endswith("attention.class_embedder.class_embedder.weight")]
    release_values = sum(t.numel() for k, t in state.items() if k not in copies)
    assert sum(p.numel() for p in model.parameters()) == release_values


# --- bad checkpoints: one clear line, nothing runs ---------------------------------------------------

@pytest.fixture(scope="module")
def sd_state():
    from layoutdiffuse.release import read_release_state_dict

    return read_release_state_dict(RELEASE / "sd_layout.ckpt")


def convert_state(state, tmp_path, name="bad.ckpt"):
    from layoutdiffuse.release.export import convert_release

    path = tmp_path / name
    torch.save({"epoch": 0, "global_step": 0, "state_dict": state}, path)
    return convert_release(path, RELEASE / "sd_layout.json", tmp_path / "out.safetensors")


@pytest.mark.parametrize("damage, expect", [
    ("remove_foundation", "missing"), ("remove_layout", "denoise_fn.input_blocks.1.2.qkv.bias"),
    ("shape", "denoise_fn.middle_block.0.in_layers.2.weight (64, 64, 3, 1)"), ("extra", "denoise_fn.input_blocks.1.1.extra.weight"),
    ("extra_prefix", "model_ema.decay"), ("table", "differs from"),
])
def test_bad_checkpoints_fail_with_one_line(sd_state, tmp_path, damage, expect):
    state = dict(sd_state)
    if damage == "remove_foundation":
        del state["denoise_fn.output_blocks.2.0.in_layers.2.weight"]
    elif damage == "remove_layout":
        del state["denoise_fn.input_blocks.1.2.qkv.bias"]
    elif damage == "shape":
        state["denoise_fn.middle_block.0.in_layers.2.weight"] = torch.zeros(64, 64, 3, 1)
    elif damage == "extra":
        state["denoise_fn.input_blocks.1.1.extra.weight"] = torch.zeros(3)
    elif damage == "extra_prefix":
        state["model_ema.decay"] = torch.tensor(0.99)
    elif damage == "table":
        state["denoise_fn.input_blocks.3.2.attention.class_embedder.class_embedder.weight"] = torch.zeros(8, 16)
    with pytest.raises(UserError) as err:
        convert_state(state, tmp_path)
    message = str(err.value)
    assert "\n" not in message and expect in message, message
    assert not (tmp_path / "out.safetensors").exists()


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_object_that_would_run_code_is_refused(sd_state, tmp_path):
    from layoutdiffuse.cli import main

    marker = tmp_path / "ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"epoch": 0, "state_dict": dict(sd_state), "hyper_parameters": _RunsCode(marker)}, path)
    from layoutdiffuse.release import read_release_state_dict

    with pytest.raises(UserError) as err:
        read_release_state_dict(path)
    assert "\n" not in str(err.value) and "system" in str(err.value) and "refused" in str(err.value)
    assert main(["convert-release", str(path), "--release-config", str(RELEASE / "sd_layout.json"),
                 "--out", str(tmp_path / "o.safetensors")]) == 2
    assert not marker.exists() and not (tmp_path / "o.safetensors").exists()
    with pytest.raises(Exception):  # the file really would run code: a plain unpickler refuses it only when restricted
        torch.load(path, weights_only=True)


def test_plain_data_classes_in_a_checkpoint_are_read_as_inert_stand_ins(sd_state, tmp_path):
    from layoutdiffuse.release import read_release_state_dict

    path = tmp_path / "hparams.ckpt"
    torch.save({"state_dict": dict(sd_state), "hyper_parameters": argparse.Namespace(lr=1e-4)}, path)
    state = read_release_state_dict(path)
    assert set(state) == set(sd_state) and all(torch.equal(state[k], sd_state[k]) for k in state)


# --- conventions ---------------------------------------------------------------------------------------

def test_centre_pixel_mask_pick_matches_a_naive_loop():
    from layoutdiffuse.nn.adaptor import subsample_mask

    mask = torch.randint(0, 19, (2, 16, 16))
    for size in (16, 8, 4, 2, 1):
        r = 16 // size
        naive = torch.empty(2, size, size, dtype=mask.dtype)
        for i in range(size):
            for j in range(size):
                naive[:, i, j] = mask[:, i * r + r // 2, j * r + r // 2]
        assert torch.equal(subsample_mask(mask, size, size, pick="centre"), naive)
    assert torch.equal(subsample_mask(mask, 8, 8), mask[:, ::2, ::2])  # the default stays the top-left pick
    with pytest.raises(UserError):
        subsample_mask(mask, 5, 5, pick="centre")


def test_ldm_plms_timesteps_and_release_schedule():
    from layoutdiffuse.diffusion import GaussianDiffusion
    from layoutdiffuse.diffusion.solvers import ldm_timesteps
    from layoutdiffuse.release import diffusion_config, read_release_config

    assert ldm_timesteps(1000, 20).tolist() == list(range(1, 1000, 50))
    release = read_release_config(RELEASE / "celeb_mask.json")
    d = GaussianDiffusion(**diffusion_config(release))
    expect = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2  # linear in sqrt(beta)
    assert torch.allclose(d.betas64, expect, rtol=1e-12, atol=0)


def test_coco_class_ids_are_category_id_minus_one():
    from layoutdiffuse.layout_file import parse_layout
    from layoutdiffuse.release.classes import coco_stuff_class_names, release_class_id

    names = coco_stuff_class_names()
    assert len(names) == 181 and names[0] == "person" and names[91] == "banner" and names[180] == "window-other"
    layout = parse_layout([{"label": "person", "box": [0.1, 0.1, 0.3, 0.3]}, {"label": "banner", "box": [0, 0, 1, 0.2]}], names)
    assert layout[:, 4].tolist() == [release_class_id(1), release_class_id(92)] == [0, 91]
    with pytest.raises(UserError, match="null row"):
        release_class_id(182)


# --- with the foundation: autoencoder and text encoder from its folder, prompts -------------------------

def test_convert_with_a_foundation_folder_then_sample_with_prompts(tmp_path, monkeypatch):
    """A stand-in Stable Diffusion folder whose UNet has the tiny release model's architecture (random
    weights: the release checkpoint replaces all of them); the converted module samples with prompts."""
    from tiny_sd import release_sd_folder

    from layoutdiffuse import sample
    from layoutdiffuse.experiment import load_checkpoint
    from layoutdiffuse.release.export import convert_release

    name = "sd_layout"
    folder = release_sd_folder(tmp_path / "sd", RELEASE / f"{name}.json", monkeypatch)
    out = convert_release(RELEASE / f"{name}.ckpt", RELEASE / f"{name}.json", tmp_path / "c.safetensors", foundation=folder,
                          class_names=[f"c{i}" for i in range(7)])
    module = load_checkpoint(out)
    assert type(module).__name__ == "LatentDDPMTraining" and module.text_encoder is not None
    io = load_file(str(RELEASE / f"{name}.io.safetensors"))
    with torch.no_grad():
        eps = module.model(io["x"], io["t"], cond_of(io))
    assert rel_err(eps, io["eps"]) < TOL
    images, layouts = sample([{"label": "c3", "box": [0.1, 0.2, 0.5, 0.5]}], n=2, ckpt=module, steps=2, prompt="a cat",
                             negative_prompt="blurry")
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all() and layouts[0, 0, 4] == 3
    with pytest.raises(UserError, match="text encoder"):
        unet_only = load_checkpoint(convert_release(RELEASE / f"{name}.ckpt", RELEASE / f"{name}.json", tmp_path / "u.safetensors"))
        sample(None, n=1, ckpt=unet_only, prompt="a cat")


def save_ldm_text_folder(root: Path, unet_config: dict, context_dim: int, max_length: int = 8) -> Path:
    """A stand-in of diffusers' ldm-text2im folder (unet/, vqvae/, bert/, tokenizer/, scheduler/), random weights."""
    import json

    import diffusers
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel
    from transformers import BertTokenizer

    from layoutdiffuse.sd.testing import SD_SCHEDULER

    torch.manual_seed(0)
    root.mkdir(parents=True)
    diffusers.UNet2DConditionModel(**unet_config).save_pretrained(root / "unet")
    diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
                            norm_num_groups=8, layers_per_block=1, sample_size=64).save_pretrained(root / "vqvae")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "on", "the", "grass", "blurry"]
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(root / "tokenizer" / "vocab.txt"), model_max_length=max_length).save_pretrained(root / "tokenizer")
    LDMBertModel(LDMBertConfig(vocab_size=len(vocab), max_position_embeddings=max_length, encoder_layers=1, encoder_ffn_dim=32,
                               encoder_attention_heads=2, head_dim=12, d_model=context_dim)).save_pretrained(root / "bert")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD_SCHEDULER))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "LDMTextToImagePipeline"}))
    return root


def test_convert_onto_a_laion_ldm_folder_then_sample_with_prompts(tmp_path):
    from layoutdiffuse import sample
    from layoutdiffuse.experiment import load_checkpoint
    from layoutdiffuse.release import architecture, read_release_config
    from layoutdiffuse.release.export import convert_release

    name = "ldm_text_layout"
    unet = architecture(read_release_config(RELEASE / f"{name}.json"))["unet"]
    folder = save_ldm_text_folder(tmp_path / "ldm-text2im", unet, unet["cross_attention_dim"])
    module = load_checkpoint(convert_release(RELEASE / f"{name}.ckpt", RELEASE / f"{name}.json", tmp_path / "c.safetensors",
                                             foundation=folder))
    assert module.config["adapt"]["foundation"] == "ldm_text" and type(module.text_encoder).__name__ == "LDMBertModel"
    io = load_file(str(RELEASE / f"{name}.io.safetensors"))
    with torch.no_grad():
        eps = module.model(io["x"], io["t"], cond_of(io))
    assert rel_err(eps, io["eps"]) < TOL
    images, _ = sample([{"label": "2", "box": [0.0, 0.5, 0.5, 0.5]}], n=1, ckpt=module, steps=2, prompt="a cat on the grass",
                       negative_prompt="blurry")
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()


def test_convert_a_mask_model_onto_an_ldm_folder_then_sample_a_mask(tmp_path):
    import diffusers

    from layoutdiffuse.experiment import load_checkpoint
    from layoutdiffuse.release import architecture, read_release_config
    from layoutdiffuse.release.export import convert_release

    name = "celeb_mask"
    unet = architecture(read_release_config(RELEASE / f"{name}.json"))["unet"]
    torch.manual_seed(0)
    diffusers.UNet2DModel(**unet).save_pretrained(tmp_path / "ldm" / "unet")
    diffusers.VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                      block_out_channels=(8, 8, 8), latent_channels=3, num_vq_embeddings=16, vq_embed_dim=3, norm_num_groups=8,
                      layers_per_block=1, sample_size=64).save_pretrained(tmp_path / "ldm" / "vqvae")
    module = load_checkpoint(convert_release(RELEASE / f"{name}.ckpt", RELEASE / f"{name}.json", tmp_path / "c.safetensors",
                                             foundation=tmp_path / "ldm"))
    assert module.config["adapt"]["foundation"] == "ldm" and module.image_shape == (3, 16, 16)
    io = load_file(str(RELEASE / f"{name}.io.safetensors"))
    with torch.no_grad():
        eps = module.model(io["x"], io["t"], cond_of(io))
    assert rel_err(eps, io["eps"]) < TOL
    images = module.sample(1, cond={"mask": io["mask"][:1]}, steps=2)
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
