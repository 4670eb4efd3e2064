"""Device and precision in the front doors: the resolver's lines for bad input, weights loaded in the
requested precision, bfloat16 sampling with the sampler's arithmetic in float32, out-of-memory as one line."""
from __future__ import annotations

import pytest
import torch

import layoutdiffuse
from layoutdiffuse.devices import resolve, resolve_device, resolve_dtype
from layoutdiffuse.errors import UserError
from layoutdiffuse.factory import build_module, load_checkpoint
from layoutdiffuse.sampling import SHIPPED_MODEL, sample_batched

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
LAYOUT = [{"label": "3", "box": [0.1, 0.1, 0.4, 0.6]}, {"label": "7", "box": [0.55, 0.3, 0.4, 0.6]}]


# --- the resolver --------------------------------------------------------------------------------------

def test_auto_is_float32_on_the_cpu_for_every_model():
    assert resolve("cpu", "auto", latent=True) == (CPU, torch.float32)
    assert resolve_dtype("auto", CPU, latent=False) == torch.float32
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16 and resolve_dtype(torch.float32, CPU) == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the line of a machine without CUDA")
def test_cuda_without_cuda_names_the_devices_this_machine_has():
    with pytest.raises(UserError, match=r"device 'cuda' is not available: this machine has cpu") as err:
        resolve_device("cuda")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="'cuda:1' is not available"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:x", 3])
def test_an_unknown_device_is_one_line_naming_the_choices(device):
    with pytest.raises(UserError, match="choose one of: auto, cpu, cuda, cuda:N, mps"):
        resolve_device(device)


def test_float16_on_the_cpu_is_refused_suggesting_bfloat16():
    with pytest.raises(UserError, match="float16 on the CPU is refused.*use bfloat16"):
        resolve_dtype("float16", CPU)


@pytest.mark.parametrize("dtype", ["fp8", "half", "int8", torch.int64])
def test_an_unknown_dtype_is_one_line(dtype):
    with pytest.raises(UserError, match="unknown dtype .*choose one of: auto, float32, float16, bfloat16"):
        resolve_dtype(dtype, CPU)


# --- the shipped pixel model ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped_bf16():
    return load_checkpoint(SHIPPED_MODEL, dtype="bfloat16")


def test_weights_land_in_the_requested_precision_and_the_schedule_stays_float32(shipped_bf16):
    assert {p.dtype for p in shipped_bf16.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in shipped_bf16.sampling_model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in shipped_bf16.parameters())
    assert {b.dtype for b in shipped_bf16.diffusion.buffers()} == {torch.float32}
    plain = load_checkpoint(SHIPPED_MODEL)
    assert {p.dtype for p in plain.parameters()} == {torch.float32}
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), shipped_bf16.model.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16), b), name  # the same weights, rounded once


def test_bfloat16_sampling_keeps_the_sampler_in_float32_and_returns_float32_on_the_cpu(shipped_bf16):
    seen_by_sampler, seen_by_model = [], []
    hook = shipped_bf16.sampling_model.register_forward_pre_hook(lambda m, args: seen_by_model.append(args[0].dtype))
    plan = shipped_bf16.prepare_sampling(2, {"layout": torch.tensor([[[0.1, 0.1, 0.4, 0.6, 3.0]]] * 2)}, steps=3, sampler="dpm++")

    def model_fn(x, t):
        seen_by_sampler.append(x.dtype)
        out = plan.model_fn(x, t)
        seen_by_sampler.append(out.dtype)
        return out

    x = plan.sampler.sample(model_fn, plan.shape, generator=torch.Generator().manual_seed(0))
    assert set(seen_by_sampler) == {torch.float32} and x.dtype == torch.float32
    assert set(seen_by_model) == {torch.bfloat16}
    hook.remove()
    images, layouts = layoutdiffuse.sample(LAYOUT, n=2, ckpt=shipped_bf16, steps=4, seed=0)
    assert images.dtype == torch.float32 and images.device.type == "cpu" and torch.isfinite(images).all()


def test_bfloat16_samples_stay_close_to_float32_ones(shipped_bf16):
    plain = load_checkpoint(SHIPPED_MODEL)
    a, _ = layoutdiffuse.sample(LAYOUT, n=2, ckpt=plain, steps=6, seed=0)
    b, _ = layoutdiffuse.sample(LAYOUT, n=2, ckpt=shipped_bf16, steps=6, seed=0)
    assert not torch.equal(a, b)  # the model did run in another precision
    assert (a - b).abs().mean() < 0.1  # same noise, same sampler: the pictures agree to within bf16 rounding


def test_a_module_given_with_a_dtype_is_moved_there():
    module = load_checkpoint(SHIPPED_MODEL)
    images, _ = layoutdiffuse.sample(LAYOUT, n=1, ckpt=module, steps=2, dtype="bfloat16")
    assert module.model_dtype == torch.bfloat16 and images.dtype == torch.float32
    with pytest.raises(UserError, match="float16 on the CPU is refused"):
        layoutdiffuse.sample(LAYOUT, n=1, ckpt=module, steps=2, dtype="float16")


def test_edit_takes_device_dtype_and_batch_size(shipped_bf16):
    image, _ = layoutdiffuse.sample(LAYOUT, n=1, steps=3, seed=0)
    moved = [dict(LAYOUT[0], box=[0.05, 0.05, 0.4, 0.6]), LAYOUT[1]]
    edited = layoutdiffuse.edit(image[0], LAYOUT, moved, ckpt=shipped_bf16, n=3, steps=3, batch_size=2)
    assert edited.shape == (3, 1, 32, 32) and edited.dtype == torch.float32
    whole = layoutdiffuse.edit(image[0], LAYOUT, moved, n=3, steps=3, device="cpu", dtype="float32")
    assert whole.shape == edited.shape
    with pytest.raises(UserError, match="batch_size must be an integer >= 1"):
        layoutdiffuse.edit(image[0], LAYOUT, moved, ckpt=shipped_bf16, batch_size=0)


def test_out_of_memory_while_sampling_is_one_line_naming_the_batch_size(shipped_bf16, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(shipped_bf16, "sample", out_of_memory)
    with pytest.raises(UserError, match=r"out of GPU memory while sampling a batch of 5; lower the batch size") as err:
        sample_batched(shipped_bf16, 12, batch_size=5)
    assert "\n" not in str(err.value)


def test_the_cli_refuses_a_missing_device_in_one_line(capsys, tmp_path):
    from layoutdiffuse.cli import main

    if torch.cuda.is_available():
        pytest.skip("checks the line of a machine without CUDA")
    assert main(["sample", "--device", "cuda", "--n", "1", "--out", str(tmp_path / "g.png")]) == 2
    assert main(["sample", "--dtype", "float16", "--n", "1", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "this machine has cpu" in err[0] and "use bfloat16" in err[1]


# --- a tiny Stable Diffusion model -----------------------------------------------------------------------

def test_tiny_stable_diffusion_samples_in_bfloat16_with_the_autoencoder_as_its_config_says(tmp_path):
    from test_latent import NUM_CLASSES, sd_config
    from tiny_sd import box_layouts, save_sd_folder

    module = build_module(sd_config(save_sd_folder(tmp_path / "tiny-sd"))).to_inference(CPU, torch.bfloat16).eval()
    assert module.autoencoder.upcast  # the SD VAE's config says force_upcast: it stays float32
    assert {p.dtype for p in module.autoencoder.parameters()} == {torch.float32}
    assert {p.dtype for p in module.text_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in module.model.parameters()} == {torch.bfloat16}
    seen = []
    plan = module.prepare_sampling(2, {"layout": box_layouts(2, NUM_CLASSES), "caption": ["a cat", "cat"]}, negative_prompt="blurry",
                                   steps=3)

    def model_fn(x, t):
        out = plan.model_fn(x, t)
        seen.extend([x.dtype, out.dtype])
        return out

    z = plan.sampler.sample(model_fn, plan.shape, generator=torch.Generator().manual_seed(0))
    images = plan.decode(z)
    assert set(seen) == {torch.float32} and z.dtype == torch.float32  # PLMS history and guidance in float32
    assert images.dtype == torch.float32 and images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_load_from_checkpoint_delegates_to_load_checkpoint():
    from layoutdiffuse import DDIMTraining, DDPMTraining

    module = DDPMTraining.load_from_checkpoint(SHIPPED_MODEL, dtype="bfloat16")
    assert type(module) is DDPMTraining and module.model_dtype == torch.bfloat16 and not module.training
    with pytest.raises(UserError, match="holds a DDPMTraining, not a DDIMTraining"):
        DDIMTraining.load_from_checkpoint(SHIPPED_MODEL)
