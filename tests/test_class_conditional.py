"""Class-conditional UNets (``num_classes``): the label embedding, its null class, label dropout,
classifier-free guidance over labels, and the default labels of a draw."""
import json
from pathlib import Path

import pytest
import torch

from layoutdiffuse.diffusion.guidance import class_labels, drop_condition, null_condition
from layoutdiffuse.errors import UserError
from layoutdiffuse.experiment import build_module, train
from layoutdiffuse.nn import UNet
from layoutdiffuse.sampling import sample_batched
from layoutdiffuse.training import DDPMTraining

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_unet(num_classes=3):
    torch.manual_seed(0)
    model = UNet(1, 1, base_channel=8, channel_mult=[1, 2], num_res_blocks=1, attn_levels=[], num_classes=num_classes)
    with torch.no_grad():  # zero-initialised convs (ResBlock outputs, the output conv) would hide the labels
        for p in model.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    return model.eval()


def test_labels_change_the_output_and_minus_one_is_no_class():
    model = tiny_unet()
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([3, 50, 200, 999])
    with torch.no_grad():
        by_label = [model(x, t, {"label": torch.full((4,), k)}) for k in range(3)]
        none = model(x, t, {"label": torch.full((4,), -1)})
        missing = model(x, t, None)
    assert not torch.allclose(by_label[0], by_label[1])
    assert torch.equal(none, missing)
    # the null class is its own embedding row, not a copy of a class's
    assert not any(torch.allclose(none, out) for out in by_label)


def test_label_embedding_adds_to_the_timestep_embedding():
    """Naive twin: the first ResBlock sees ``time_embed(t) + label_embed(label)``; with the label
    table zeroed, a labelled forward equals the unlabelled model whose null row is zeroed too."""
    model = tiny_unet()
    with torch.no_grad():
        model.label_embed.weight.zero_()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    with torch.no_grad():
        assert torch.allclose(model(x, t, {"label": torch.tensor([0, 2])}), model(x, t, None))


@pytest.mark.parametrize("labels, message", [
    (torch.tensor([0, 3]), "out of range"),
    (torch.tensor([-2, 0]), "out of range"),
    (torch.tensor([0.0, 1.0]), "integers"),
    (torch.tensor([0, 1, 2]), "2 integers"),
])
def test_bad_labels_are_refused_in_one_line(labels, message):
    model = tiny_unet()
    with pytest.raises(UserError, match=message):
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), {"label": labels})


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True])
def test_num_classes_is_checked(num_classes):
    with pytest.raises(UserError, match="num_classes"):
        UNet(1, 1, base_channel=8, channel_mult=[1], attn_levels=[], num_classes=num_classes)


def test_config_round_trip_and_unconditional_configs_unchanged():
    model = tiny_unet(num_classes=10)
    assert model.config["num_classes"] == 10 and model.label_embed.num_embeddings == 11
    rebuilt = UNet(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    assert "num_classes" not in UNet(1, 1, base_channel=8, channel_mult=[1], attn_levels=[]).config


def test_null_and_dropped_labels():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    assert torch.equal(null_condition({"label": labels})["label"], torch.full((8,), -1))
    assert torch.equal(drop_condition({"label": labels}, 0.0)["label"], labels)
    assert torch.equal(drop_condition({"label": labels}, 1.0)["label"], torch.full((8,), -1))
    dropped = drop_condition({"label": torch.arange(4000) % 10}, 0.25, torch.Generator().manual_seed(0))["label"]
    kept = dropped >= 0
    assert torch.equal(dropped[kept], (torch.arange(4000) % 10)[kept])  # kept labels are unchanged
    assert abs((~kept).float().mean().item() - 0.25) < 0.03


def test_class_labels_continue_from_start():
    assert class_labels(5, 3)["label"].tolist() == [0, 1, 2, 0, 1]
    assert class_labels(4, 10, start=8)["label"].tolist() == [8, 9, 0, 1]


def tiny_module():
    return DDPMTraining(tiny_unet(), {"num_timesteps": 50}, image_shape=(1, 8, 8), ema_decay=0,
                        sampling={"sampler": "ddim", "steps": 4, "guidance": 2.0})


def test_guidance_over_labels_equals_the_naive_combination():
    module = tiny_module()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 25, 45])
    cond = {"label": torch.tensor([0, 1, 2])}
    with torch.no_grad():
        guided = module.prepare_sampling(3, cond, guidance=2.0).model_fn(x, t)
        c, u = module.model(x, t, cond), module.model(x, t, {"label": torch.full((3,), -1)})
    assert torch.allclose(guided, u + 2.0 * (c - u), atol=1e-5)


def test_default_labels_of_a_draw_follow_the_image_index_across_batches():
    module = tiny_module()
    drawn = sample_batched(module, 7, seed=3, batch_size=4)
    first = module.sample(4, cond={"label": torch.tensor([0, 1, 2, 0])}, generator=torch.Generator().manual_seed(3))
    second = module.sample(3, cond={"label": torch.tensor([1, 2, 0])}, generator=torch.Generator().manual_seed(7))
    assert torch.equal(drawn, torch.cat([first, second]))
    assert torch.equal(module.sample(4, generator=torch.Generator().manual_seed(3)), first)  # no cond: the same labels


def test_mnist_batches_carry_labels_only_for_class_conditional_models():
    config = json.loads((CONFIGS / "mnist.json").read_text())
    images, labels = torch.zeros(2, 1, 28, 28), torch.tensor([4, 9])
    config["denoising_model"]["num_classes"] = 10
    assert torch.equal(build_module(config).process_batch((images, labels))["cond"]["label"], labels)
    config["denoising_model"].pop("num_classes")
    assert build_module(config).process_batch((images, labels))["cond"] is None


@pytest.mark.slow
def test_class_conditional_toy_trains_and_checkpoints(tmp_path, mnist_root):
    config = json.loads((CONFIGS / "mnist.json").read_text())
    config.update(expt_name="classes", expt_dir=str(tmp_path))
    config["denoising_model"].update(base_channel=8, channel_mult=[1, 2], attn_levels=[1], num_classes=10)
    config["diffusion"]["cond_drop_prob"] = 0.5
    config["data"].update(root=str(mnist_root), limit=16, batch_size=8, num_workers=0)
    config["trainer_args"] = {"max_steps": 2, "accelerator": "cpu", "limit_val_batches": 0, "enable_progress_bar": False, "logger": False}
    config["callbacks"] = {"checkpoint": {"every_n_train_steps": 2}}
    module = train(config)
    assert module.model.num_classes == 10
    images = module.sample(10, steps=2, sampler="ddim", guidance=3.0)
    assert images.shape == (10, 1, 28, 28) and torch.isfinite(images).all()
