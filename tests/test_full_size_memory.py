"""Memory at full size: the autoencoder decodes in slices (the same images), every attention of the
adapted models goes through scaled_dot_product_attention, training keeps gradient checkpointing."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")

from layoutdiffuse.autoencoder import Autoencoder  # noqa: E402
from layoutdiffuse.errors import UserError  # noqa: E402

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tiny_sd import tiny_ldm, tiny_sd  # noqa: E402


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_decoding_in_slices_gives_the_images_of_one_batch(kind):
    model = tiny_sd()["vae"] if kind == "kl" else tiny_ldm()["vqvae"]
    torch.manual_seed(0)
    for p in model.parameters():  # not the zero-ish init: every layer matters
        p.data.add_(0.1 * torch.randn_like(p))
    ae = Autoencoder(model, decode_batch_size=None)
    z = torch.randn(5, ae.latent_channels, 4, 4)
    whole = ae.decode(z)
    for size in (1, 2, 4, 5, 8):
        sliced = ae.decode(z, batch_size=size)
        assert sliced.shape == whole.shape
        torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-5)
    calls = []
    original = ae.model.decode
    ae.model.decode = lambda part, *a, **k: calls.append(len(part)) or original(part, *a, **k)
    ae.decode_batch_size = 2
    ae.decode(z)
    assert calls == [2, 2, 1]  # the default slice of the autoencoder


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_decode_batch_size_is_one_line(bad):
    with pytest.raises(UserError, match="positive integer"):
        Autoencoder(tiny_sd()["vae"], decode_batch_size=bad)
    with pytest.raises(UserError, match="batch_size must be a positive integer"):
        Autoencoder(tiny_sd()["vae"]).decode(torch.zeros(1, 4, 2, 2), batch_size=bad)


@pytest.mark.parametrize("name", ["cocostuff_SD2_1", "cocostuff", "celeb_mask"])
def test_every_attention_of_an_adapted_model_uses_sdpa(name, monkeypatch):
    """Each attention call of the adapted UNet and the autoencoder reaches F.scaled_dot_product_attention
    (so GPUs use flash / memory-efficient kernels): counted against the attention layers there are."""
    import torch.nn.functional as F
    from diffusers.models.attention_processor import Attention

    from layoutdiffuse.nn.adaptor import LayoutAttention
    from layoutdiffuse.release.random_module import build_random_module
    from gpu_check import conditions

    module = build_random_module(name, tiny=True)
    with torch.no_grad():  # the text encoder is not ours (LDMBert writes its softmax out): encode before counting
        if module.model.layout_config["mask"]:
            cond = {"mask": torch.randint(0, 19, (1, 64, 64))}
        else:
            cond = module.encode_condition(conditions(1, torch.device("cpu")), 1)
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    softmax = []
    monkeypatch.setattr(torch.Tensor, "softmax", lambda self, *a, **k: softmax.append(1) or torch.softmax(self, *a, **k))
    layers = [m for m in module.model.modules() if isinstance(m, Attention)]
    blocks = [m for m in module.model.modules() if isinstance(m, LayoutAttention)]
    with torch.no_grad():
        module.model(torch.randn(1, *module.image_shape), torch.tensor([10]), cond)
        assert len(calls) >= len(layers) + len(blocks) > 0
        calls.clear()
        module.autoencoder.decode(torch.randn(1, *module.image_shape))
        assert len(calls) == sum(isinstance(m, Attention) for m in module.autoencoder.model.decoder.modules())
    assert not softmax


def test_gradient_checkpointing_is_on_in_a_foundation_training_step():
    """The adapted UNet checkpoints its diffusers blocks and its layout-attention blocks when training."""
    from torch.utils import checkpoint as ckpt

    from layoutdiffuse.release.random_module import build_random_module

    module = build_random_module("cocostuff_SD2_1", tiny=True)
    module.model.enable_gradient_checkpointing()
    assert module.model.unet.is_gradient_checkpointing
    calls = []
    real = ckpt.checkpoint
    import layoutdiffuse.sd.layout_unet as lu
    original = lu.checkpoint
    lu.checkpoint = lambda fn, *a, **k: calls.append(fn) or original(fn, *a, **k)
    try:
        module.train()
        batch = {"image": torch.rand(1, 3, 64, 64) * 2 - 1, "layout": torch.tensor([[[0.1, 0.1, 0.5, 0.5, 3.0]]]), "caption": ["a cat"]}
        loss = module.shared_step(batch, "train")["loss"]
        loss.backward()
    finally:
        lu.checkpoint = original
    assert real is ckpt.checkpoint
    n_blocks = len(module.model.adaptor.blocks)
    assert sum(1 for fn in calls if type(fn).__name__ == "LayoutAttention") == n_blocks  # every layout block checkpointed
    assert len(calls) > n_blocks  # and the diffusers blocks
