"""UNet shapes, block registries and the seed's process_batch override."""
import pytest
import torch

from layoutdiffuse.nn import ATTN_BLOCKS, RES_BLOCKS, UNet


@pytest.mark.parametrize(
    "cfg, size",
    [
        (dict(in_channel=1, out_channel=1, base_channel=16, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[1]), 16),
        (dict(in_channel=3, out_channel=6, base_channel=32, channel_mult=[1, 2, 2], num_res_blocks=2, attn_levels=[1, 2], num_heads=4, res_block_type="basic"), 32),
        (dict(in_channel=4, out_channel=4, base_channel=8, channel_mult=[1, 1, 2, 2], num_res_blocks=1, attn_levels=[], dropout=0.1), 32),
    ],
)
def test_output_shapes(cfg, size):
    model = UNet(**cfg)
    x = torch.randn(2, cfg["in_channel"], size, size)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == (2, cfg["out_channel"], size, size)
    assert set(model.block_info) >= {"input_0", "middle", f"output_{len(model.output_blocks) - 1}"}


def test_zero_initialised_output_and_time_dependence():
    model = UNet(1, 1, base_channel=16, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[1])
    x = torch.randn(2, 1, 16, 16)
    assert torch.count_nonzero(model(x, torch.tensor([3, 3]))) == 0  # out conv starts at zero
    for p in model.parameters():  # residual branches start at zero too; give them weights
        torch.nn.init.normal_(p, std=0.05)
    a, b = model(x, torch.tensor([3, 3])), model(x, torch.tensor([900, 900]))
    assert not torch.allclose(a, b)


def test_unknown_block_names_list_the_choices():
    with pytest.raises(KeyError, match="unknown res_block_type 'resnet'; choose one of: basic, scale_shift"):
        UNet(res_block_type="resnet")
    with pytest.raises(KeyError, match="unknown attn_block_type 'linear'; choose one of:"):
        UNet(attn_block_type="linear")
    assert "basic" in RES_BLOCKS and "self" in ATTN_BLOCKS


def test_bad_sizes_are_clear():
    model = UNet(1, 1, base_channel=8, channel_mult=[1, 2, 2], num_res_blocks=1, attn_levels=[])
    with pytest.raises(ValueError, match=r"image size \(30, 30\) must be divisible by 4"):
        model(torch.randn(1, 1, 30, 30), torch.tensor([1]))
    with pytest.raises(ValueError, match="attn_levels"):
        UNet(channel_mult=[1, 2], attn_levels=[3])


def test_seed_ddpm_mnist_override_verbatim():
    from layoutdiffuse.training import DDPMTraining

    class DDPM_MNIST(DDPMTraining):
        def process_batch(self, y_0, mode='train'):
            return super().process_batch(y_0[0], mode)

    model = UNet(1, 1, base_channel=8, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[])
    module = DDPM_MNIST(model, {"num_timesteps": 100}, image_shape=(1, 16, 16))
    images, labels = torch.randn(4, 1, 16, 16), torch.arange(4)
    out = module.training_step([images, labels], 0)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert torch.equal(out["x0"], images)
    with pytest.raises(TypeError, match="Override process_batch"):
        DDPMTraining(model, {"num_timesteps": 100}).training_step([images, labels], 0)
