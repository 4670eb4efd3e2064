"""Layout-MNIST: determinism, source splits, layout/mask/image agreement, overlap and tightness.

The reference renderer and the IDX reader here are deliberately naive and independent of the
package (numpy ``nonzero`` crops, raw file bytes), as GUIDE.md asks of references."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from layoutdiffuse.layout import IGNORE, PAD, validate_layout
from layoutdiffuse.data.layout_mnist import DEFAULT_LENGTH, LayoutMNIST, exact_fraction
from layoutdiffuse.data.registry import DATASETS
from layoutdiffuse.nn.adaptor import rasterize_boxes

N_ITEMS = 150  # items checked per property


def read_idx(path) -> np.ndarray:
    raw = open(path, "rb").read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="module")
def source(mnist_root):
    """Independent copies of the MNIST splits: {"train"|"test": (images (M, 28, 28), labels (M,))}."""
    raw = mnist_root / "MNIST" / "raw"
    return {s: (read_idx(raw / f"{p}-images-idx3-ubyte"), read_idx(raw / f"{p}-labels-idx1-ubyte"))
            for s, p in (("train", "train"), ("test", "t10k"))}


@pytest.fixture(scope="module")
def datasets(mnist_root):
    return {S: {split: LayoutMNIST(mnist_root, split, canvas_size=S) for split in ("train", "val")} for S in (32, 48, 64)}


def pixel_boxes(layout: torch.Tensor, S: int) -> list[tuple[int, int, int, int]]:
    """Layout rows -> integer pixel boxes (x0, y0, w, h); asserts they are exactly integral."""
    px = layout[:, :4].double() * S
    assert torch.allclose(px, px.round(), atol=1e-4), px
    return [tuple(int(v) for v in row) for row in px.round().long()]


def reference_render(images: np.ndarray, digits, boxes, S: int, threshold: float = 0.5):
    """Naive composition: crop each digit to its nonzero pixels, resize, max-compose."""
    canvas, patches = np.zeros((S, S), np.float32), []
    for d, (x, y, w, h) in zip(digits, boxes):
        ys, xs = np.nonzero(images[d])
        crop = torch.from_numpy(images[d, ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32) / 255)
        patch = F.interpolate(crop[None, None], size=(h, w), mode="bilinear", antialias=True)[0, 0].clamp(0, 1).numpy()
        canvas[y:y + h, x:x + w] = np.maximum(canvas[y:y + h, x:x + w], patch)
        patches.append(patch)
    return canvas * 2 - 1, patches


def ios(a, b) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(iw, 0) * max(ih, 0) / min(a[2] * a[3], b[2] * b[3])


def items(ds, n=N_ITEMS):
    return [ds[i] for i in range(n)]


def test_shapes_and_ranges(datasets):
    for S, by_split in datasets.items():
        for ds in by_split.values():
            for item in items(ds, 40):
                assert item["image"].shape == (1, S, S) and item["image"].dtype == torch.float32
                assert item["mask"].shape == (S, S) and item["mask"].dtype == torch.long
                assert item["digits"].shape == (3,) and item["digits"].dtype == torch.long
                assert item["image"].min() == -1 and item["image"].max() <= 1
                assert set(item["mask"].unique().tolist()) <= set(range(10)) | {IGNORE}
    assert LayoutMNIST.num_classes == 10 and LayoutMNIST.class_names == [str(i) for i in range(10)]


def test_deterministic_per_seed_split_index(mnist_root, datasets):
    ds = datasets[32]["train"]
    again = LayoutMNIST(mnist_root, "train", canvas_size=32)
    other_seed = LayoutMNIST(mnist_root, "train", canvas_size=32, seed=1)
    torch.manual_seed(123)  # the global RNG plays no part
    for i in (0, 1, 17, 59999):
        a, b, c = ds[i], again[i], other_seed[i]
        for k in a:
            assert torch.equal(a[k], b[k]), k
        assert not torch.equal(a["image"], c["image"])
    assert torch.equal(ds[-1]["image"], ds[len(ds) - 1]["image"])
    # different seeds give different canvases almost everywhere
    same = sum(torch.equal(ds[i]["layout"], other_seed[i]["layout"]) for i in range(50))
    assert same == 0
    with pytest.raises(IndexError):
        ds[len(ds)]


@pytest.mark.parametrize("split,src,other", [("train", "train", "test"), ("val", "test", "train")])
def test_digits_come_from_their_split(datasets, source, split, src, other):
    ds = datasets[48][split]
    images, labels = source[src]
    for item in items(ds, 60):
        n = len(item["layout"])
        digits = item["digits"][:n].tolist()
        assert all(0 <= d < len(images) for d in digits) and (item["digits"][n:] == PAD).all()
        assert item["layout"][:, 4].long().tolist() == [int(labels[d]) for d in digits]
        boxes = pixel_boxes(item["layout"], 48)
        want, _ = reference_render(images, digits, boxes, 48)
        assert np.allclose(item["image"][0].numpy(), want, atol=1e-5)
        if n:  # the same indices in the other split draw other digits
            wrong, _ = reference_render(source[other][0], [d % len(source[other][0]) for d in digits], boxes, 48)
            assert not np.allclose(item["image"][0].numpy(), wrong, atol=1e-2)


def test_layout_valid_and_counts(datasets, mnist_root):
    for S in (32, 64):
        counts = []
        for item in items(datasets[S]["val"]):
            validate_layout(item["layout"], 10)
            counts.append(len(item["layout"]))
        assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) == 3
    exact = LayoutMNIST(mnist_root, "train", canvas_size=64, min_digits=3, max_digits=3)
    assert all(len(it["layout"]) == 3 for it in items(exact, 50))  # redraws reach min_digits


@pytest.mark.parametrize("spacing,below_half", [("linear", 1 / 3), ("log", 1 / 2)])
def test_scale_spacing(mnist_root, spacing, below_half):
    """Longer box side s * S with s in (0.25, 1): uniform puts a third of the boxes below half the
    canvas, log-uniform half of them (ln 2 / ln 4); the extremes are reached either way."""
    ds = LayoutMNIST(mnist_root, "train", canvas_size=64, max_digits=1, digit_scale=(0.25, 1.0), scale_spacing=spacing, length=600)
    sides = np.array([max(w, h) for item in items(ds, 600) for (_, _, w, h) in pixel_boxes(item["layout"], 64)]) / 64
    assert len(sides) == 600 and sides.min() >= 0.25 - 1e-9 and sides.max() <= 1.0 + 1e-9
    assert sides.min() < 0.27 and sides.max() > 0.97
    assert abs((sides < 0.5).mean() - below_half) < 0.06
    assert spacing in repr(ds)


def test_overlap_limit(datasets, mnist_root):
    loose = LayoutMNIST(mnist_root, "train", canvas_size=48, max_digits=4, max_overlap=0.5)
    disjoint = LayoutMNIST(mnist_root, "train", canvas_size=64, max_digits=3, digit_scale=(0.3, 0.4), max_overlap=0.0)
    for ds, limit in ((datasets[32]["train"], 0.3), (loose, 0.5), (disjoint, 0.0)):
        worst = 0.0
        for item in items(ds):
            boxes = pixel_boxes(item["layout"], ds.canvas_size)
            for i in range(len(boxes)):
                for j in range(i):
                    worst = max(worst, ios(boxes[i], boxes[j]))
        assert worst <= limit + 1e-9
        if limit > 0:
            assert worst > limit / 2  # the limit is actually reached, not trivially satisfied


def test_mask_agrees_with_image_and_boxes(datasets):
    # numpy: torch parallelises ops over >32k elements, slow on 2 busy cores
    for S in (32, 64):
        ds = datasets[S]["train"]
        thr = 2 * ds.mask_threshold - 1
        for item in items(ds):
            image, mask, layout = item["image"][0].numpy(), item["mask"].numpy(), item["layout"]
            regions = np.zeros((11, S, S), dtype=bool)  # per class; row 10: no box at all
            for (x, y, w, h), c in zip(pixel_boxes(layout, S), layout[:, 4].long().tolist()):
                regions[c, y:y + h, x:x + w] = True
            inside = regions[:10].any(0)
            regions[10] = ~inside
            in_own_box = np.take_along_axis(regions, np.minimum(mask, 10)[None], 0)[0]
            digit = mask != IGNORE
            assert not (digit & ~in_own_box).any(), "a digit's mask pixel lies outside every box of its class"
            assert not (digit & (image <= thr)).any(), "mask marks a pixel without ink"
            assert not (~digit & (image > thr)).any(), "ink above the threshold is left out of the mask"
            assert not (~inside & (digit | (image != -1))).any(), "ink or mask outside every box"


def test_mask_later_digit_on_top(datasets, source):
    ds, checked = datasets[64]["train"], 0
    for item in items(ds):
        n, layout = len(item["layout"]), item["layout"]
        digits, boxes = item["digits"][:n].tolist(), pixel_boxes(layout, 64)
        _, patches = reference_render(source["train"][0], digits, boxes, 64)
        want = torch.full((64, 64), IGNORE)
        for (x, y, w, h), p, c in zip(boxes, patches, layout[:, 4].long().tolist()):
            want[y:y + h, x:x + w].masked_fill_(torch.from_numpy(p) > ds.mask_threshold, c)
        assert torch.equal(item["mask"], want)
        checked += n > 1
    assert checked > 0


def test_boxes_are_tight(datasets):
    for S in (32, 48, 64):
        isolated = 0
        for item in items(datasets[S]["val"]):
            image, boxes = item["image"][0], pixel_boxes(item["layout"], S)
            for i, (x, y, w, h) in enumerate(boxes):
                if any(ios(boxes[i], b) > 0 for j, b in enumerate(boxes) if j != i):
                    continue  # another digit's ink could touch this box's edges
                isolated += 1
                ink = image[y:y + h, x:x + w] > -1
                assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any(), (S, boxes[i])
        assert isolated > N_ITEMS // 2


def test_layout_rasterises_to_the_pasted_pixels(datasets):
    for S in (32, 48, 64):
        for item in items(datasets[S]["train"], 50):
            cover = rasterize_boxes(item["layout"][None], S, S)[0]
            for k, (x, y, w, h) in enumerate(pixel_boxes(item["layout"], S)):
                want = torch.zeros(S, S, dtype=torch.bool)
                want[y:y + h, x:x + w] = True
                assert torch.equal(cover[k], want)
    for S in range(8, 257):  # float32 k/S can land one ulp off; exact_fraction fixes it
        k = torch.arange(S + 1)
        assert torch.equal(torch.floor(exact_fraction(k, S, start=True) * S).long(), k)
        assert torch.equal(torch.ceil(exact_fraction(k, S, start=False) * S).long(), k)


def test_collate_pads_layouts(mnist_root):
    ds = LayoutMNIST(mnist_root, "val", canvas_size=32, min_digits=0, max_digits=3, length=40)
    batch = [ds[i] for i in range(len(ds))]
    counts = [len(b["layout"]) for b in batch]
    assert min(counts) == 0 and max(counts) == 3  # empty layouts are legal
    out = ds.collate(batch)
    assert out["image"].shape == (40, 1, 32, 32) and out["mask"].shape == (40, 32, 32) and out["digits"].shape == (40, 3)
    assert out["layout"].shape == (40, 3, 5)
    for b, n in zip(out["layout"], counts):
        assert (b[n:, 4] == PAD).all() and (b[:n, 4] >= 0).all()
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=ds.collate)
    assert next(iter(loader))["layout"].shape[0] == 8


def test_registry_factory(mnist_root):
    ds = DATASETS.get("layout_mnist")(split="val", root=str(mnist_root), image_size=48, max_digits=2, length=7, seed=3)
    assert isinstance(ds, LayoutMNIST) and len(ds) == 7 and ds[0]["image"].shape == (1, 48, 48)
    assert ds.collate is not None and ds.class_names[9] == "9"
    assert len(DATASETS.get("layout_mnist")(split="train", root=str(mnist_root))) == DEFAULT_LENGTH["train"] == 60000
    assert len(DATASETS.get("layout_mnist")(split="val", root=str(mnist_root), digit_scale=[0.4, 0.5])) == 10000


@pytest.mark.parametrize("kwargs,message", [
    ({"canvas_size": 16}, "too small"),
    ({"min_digits": 3, "max_digits": 2}, "min_digits"),
    ({"split": "test"}, "unknown split 'test'; choose one of: train, val"),
    ({"digit_scale": (0.6, 0.3)}, "digit_scale"),
    ({"max_overlap": 1.5}, "max_overlap"),
    ({"scale_spacing": "geometric"}, "unknown scale_spacing 'geometric'; choose one of: linear, log"),
])
def test_clear_errors(mnist_root, kwargs, message):
    with pytest.raises(ValueError, match=message):
        LayoutMNIST(mnist_root, **kwargs)
