"""Every layout dataset feeds a layout model: one training step of a tiny adapted UNet per loader.

COCO-stuff, Visual Genome and CelebAMask-HQ come from fixtures in their true on-disk formats
(layoutdiffuse/data/fixtures.py), Layout-MNIST from MNIST. Datasets are built through the
``DATASETS`` registry (as configs do); the step checks that the loss is finite, that the
adaptor's zero-initialised outputs get gradients, and that the batch's classes reach exactly
their rows of the instance-prompt table.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from layoutdiffuse.data.fixtures import VG_PARAMS, write_celebamask, write_coco, write_visual_genome
from layoutdiffuse.config import validate
from layoutdiffuse.data.celebmask import merge_celebamask
from layoutdiffuse.layout import IGNORE, validate_layout
from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.data.visual_genome import preprocess_visual_genome
from layoutdiffuse.experiment import build_datasets, build_loaders, build_module
from layoutdiffuse.nn import UNet
from layoutdiffuse.nn.adaptor import is_adaptor_name
from layoutdiffuse.training import DDPMTraining

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is fastest (tests/conftest.py)

SIZE = 32
CLASSES = {"coco_stuff": 171, "celebmask": 19, "layout_mnist": 10}  # visual_genome: the fixture's vocabulary (4)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """One data root holding all three real-image datasets (train and val of each)."""
    root = tmp_path_factory.mktemp("data")
    write_coco(root, "train")
    write_coco(root, "val")
    write_visual_genome(root)
    preprocess_visual_genome(root / "vg", **VG_PARAMS)
    write_celebamask(root)
    merge_celebamask(root)
    return root


def dataset(name: str, root, mnist_root, split: str = "train", **kwargs):
    if name == "layout_mnist":
        return DATASETS.get(name)(split=split, root=str(mnist_root), image_size=SIZE, length=4, **kwargs)
    return DATASETS.get(name)(split=split, root=str(root), image_size=SIZE, **kwargs)


def tiny_layout_unet(channels: int, num_classes: int, mask: bool) -> UNet:
    return UNet(in_channel=channels, out_channel=channels, base_channel=8, channel_mult=[1, 2], num_res_blocks=1,
                attn_levels=[1], layout={"num_classes": num_classes, "levels": [0, 1], "embed_dim": 16,
                                         "num_task_prompts": 4, "mask": mask})


def as_if_pretrained(model: UNet) -> UNet:
    """Give the backbone's zero-initialised layers (output conv, attention projections) random
    weights, as a trained foundation has; otherwise no gradient reaches anything upstream of them."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not is_adaptor_name(n) and p.ndim > 1 and not p.any():
                p.normal_(0, 0.05)
    return model


def classes_in(batch: dict, mask: bool, num_classes: int) -> set[int]:
    """Prompt-table rows the batch's layout must touch (the null row, ``num_classes``, excluded)."""
    if mask:
        return {int(c) for c in batch["mask"].unique() if int(c) != IGNORE}
    cls = batch["layout"][..., 4]
    return {int(c) for c in cls[cls >= 0].unique()}


def adaptor_params(model: UNet) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if is_adaptor_name(n)}


CASES = [
    ("coco_stuff", False),
    ("visual_genome", False),
    ("celebmask", True),   # part masks (the paper's CelebAMask-HQ setting)
    ("celebmask", False),  # its mask-derived boxes
    ("layout_mnist", False),
    ("layout_mnist", True),
]


@pytest.mark.parametrize("name, mask", CASES, ids=[f"{n}-{'mask' if m else 'boxes'}" for n, m in CASES])
def test_one_training_step(name, mask, root, mnist_root):
    ds = dataset(name, root, mnist_root)
    assert callable(ds.collate) and len(ds.class_names) == ds.num_classes == CLASSES.get(name, ds.num_classes)
    batch = next(iter(DataLoader(ds, batch_size=2, shuffle=False, collate_fn=ds.collate)))
    channels = batch["image"].shape[1]
    assert batch["image"].shape == (2, channels, SIZE, SIZE) and batch["layout"].shape[::2] == (2, 5)
    validate_layout(batch["layout"], ds.num_classes)
    if mask:
        assert batch["mask"].shape == (2, SIZE, SIZE)

    torch.manual_seed(0)
    model = as_if_pretrained(tiny_layout_unet(channels, ds.num_classes, mask))
    module = DDPMTraining(model, {"num_timesteps": 100}, image_shape=(channels, SIZE, SIZE))
    loss = module.training_step(batch, 0)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    params = adaptor_params(model)
    assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    # a fresh adaptor is an identity: its zero-initialised outputs are what the first step trains
    for n, p in params.items():
        if n.endswith("proj_out.weight") or n.endswith("task_prompt.gate"):
            assert p.grad.abs().sum() > 0, n

    # once the adaptor is open, the gradient reaches the prompt rows of the batch's classes, and only those
    with torch.no_grad():
        for n, p in params.items():
            if n.endswith("proj_out.weight"):
                p.normal_(0, 0.1)
    model.zero_grad()
    module.training_step(batch, 0)["loss"].backward()
    rows = model.adaptor.prompt_table.weight.grad.abs().sum(1)
    touched = set(rows.nonzero().flatten().tolist()) - {ds.num_classes}
    assert touched == classes_in(batch, mask, ds.num_classes)


@pytest.mark.parametrize("name", ["coco_stuff", "visual_genome", "celebmask"])
def test_config_builds_data_and_trains(name, root):
    """``"data": {"dataset": name, ...}`` validates, builds train/val, and one batch trains the configured model."""
    num_classes = DATASETS.get(name)(split="val", root=str(root), image_size=SIZE).num_classes
    mask = name == "celebmask"
    config = {
        "expt_name": f"test_{name}",
        "denoising_model": tiny_layout_unet(3, num_classes, mask).config,
        "diffusion": {"num_timesteps": 100},
        "data": {"dataset": name, "root": str(root), "image_size": SIZE, "batch_size": 2, "flip": 0.5},
    }
    validate(config)
    datasets = build_datasets(config)
    assert {s: ds.num_classes for s, ds in datasets.items()} == {"train": num_classes, "val": num_classes}
    loaders = build_loaders(config, datasets)
    module = build_module(config)
    assert module.model.adaptor.num_classes == datasets["train"].num_classes
    loss = module.training_step(next(iter(loaders["train"])), 0)["loss"]
    loss.backward()
    assert torch.isfinite(loss)


def test_limit_keeps_the_layout_interface(root):
    full = DATASETS.get("coco_stuff")(split="val", root=str(root), image_size=SIZE)
    ds = DATASETS.get("coco_stuff")(split="val", root=str(root), image_size=SIZE, limit=1)
    assert len(ds) == 1 and ds.num_classes == 171 and ds.class_names == full.class_names
    assert ds.collate([ds[0]])["layout"].shape == (1, 3, 5)
    with pytest.raises(ValueError, match="limit must be a positive"):
        DATASETS.get("coco_stuff")(split="val", root=str(root), limit=0)


def test_unknown_split_names_the_choices(root):
    with pytest.raises(ValueError, match="unknown COCO split 'test'; choose one of: train, val"):
        DATASETS.get("coco_stuff")(split="test", root=str(root))
    assert len(DATASETS.get("visual_genome")(split="test", root=str(root), image_size=SIZE)) == 1
