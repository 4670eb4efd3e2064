"""The Layout-MNIST detection score: decoding, matching, the shipped detector on real and doubled digits."""
import sys
from pathlib import Path

import pytest
import torch

from layoutdiffuse.evaluation.detection import (DigitLocator, decode, detection_score, detections_as_layout, exact_fraction,
                                                 layout_targets, matches, mean_average_precision)
from layoutdiffuse.evaluation.train_detector import loss, targets

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))

LAYOUT = torch.tensor([[[3 / 32, 4 / 32, 10 / 32, 14 / 32, 3.0], [16 / 32, 10 / 32, 13 / 32, 15 / 32, 8.0]]])


def test_targets_decode_back_to_the_layout_boxes():
    t = targets(LAYOUT)
    assert int((t[0, 0] == 1).sum()) == 2
    logits = torch.cat([torch.where(t[:, :1] == 1, 10.0, -10.0), t[:, 1:]], 1)
    boxes, peaks = decode(logits)[0]
    expected = layout_targets(LAYOUT, (32, 32))[0]["boxes"]
    order = boxes[:, 0].argsort()
    torch.testing.assert_close(boxes[order], expected, atol=1e-4, rtol=0)
    assert (peaks > 0.99).all()


def test_loss_is_lowest_at_the_targets():
    t = targets(LAYOUT)
    perfect = torch.cat([torch.where(t[:, :1] == 1, 12.0, -12.0), t[:, 1:]], 1)
    assert loss(perfect, t) < 0.01 < loss(torch.zeros_like(perfect), t)
    assert DigitLocator(8)(torch.zeros(2, 1, 32, 32)).shape == (2, 5, 32, 32)


def naive_matches(pred, target, iou=0.5):
    """COCO greedy matching written out with plain loops (the reference for ``matches``)."""
    def box_iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    used, tp = set(), 0
    for i in sorted(range(len(pred["scores"])), key=lambda i: -float(pred["scores"][i])):
        best, best_j = iou, None
        for j in range(len(target["boxes"])):
            v = box_iou(pred["boxes"][i].tolist(), target["boxes"][j].tolist())
            if j not in used and int(target["labels"][j]) == int(pred["labels"][i]) and v >= best:
                best, best_j = v, j
        if best_j is not None:
            used.add(best_j)
            tp += 1
    return tp, len(pred["scores"]) - tp, len(target["boxes"]) - tp


def test_matches_agree_with_a_naive_count():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        n, k = int(torch.randint(0, 4, (), generator=g)), int(torch.randint(0, 4, (), generator=g))
        xy = torch.rand(n + k, 2, generator=g) * 20
        wh = torch.rand(n + k, 2, generator=g) * 10 + 2
        boxes = torch.cat([xy, xy + wh], 1)
        target = {"boxes": boxes[:n], "labels": torch.randint(0, 2, (n,), generator=g)}
        jitter = torch.rand(k, 4, generator=g) * 4
        pick = torch.randint(0, max(n + k, 1), (k,), generator=g)  # near a target box or anywhere
        pred = {"boxes": boxes[pick] + jitter,
                "labels": torch.randint(0, 2, (k,), generator=g), "scores": torch.rand(k, generator=g)}
        assert matches(pred, target) == naive_matches(pred, target)


def test_exact_fraction_and_layout_round_trip():
    t = layout_targets(LAYOUT, (32, 32))
    pred = [{"boxes": t[0]["boxes"], "labels": t[0]["labels"], "scores": torch.ones(2)}]
    assert exact_fraction(pred, t) == 1.0
    extra = [{"boxes": torch.cat([t[0]["boxes"], t[0]["boxes"][:1] + 30]), "labels": torch.tensor([3, 8, 3]), "scores": torch.ones(3)}]
    assert exact_fraction(extra, t) == 0.0
    torch.testing.assert_close(detections_as_layout(pred, (32, 32)), LAYOUT)


@pytest.fixture(scope="module")
def val(mnist_root):
    from layoutdiffuse.data.registry import DATASETS

    ds = DATASETS.get("layout_mnist")(split="val", root=str(mnist_root), image_size=32, length=200)
    return ds, ds.collate([ds[i] for i in range(200)])


def test_shipped_detector_finds_real_digits(val, one_thread):
    _, batch = val
    score = detection_score(batch["image"], batch["layout"])
    assert score["ap50"] >= 0.95 and score["ap"] >= 0.7
    blank = detection_score(torch.full((4, 1, 32, 32), -1.0), batch["layout"][:4])
    assert blank["ap50"] == 0.0 and blank["exact50"] == 0.0


def test_shipped_detector_rejects_doubled_digits(val, one_thread):
    from bench_detector import doubled_canvases
    from bench_hand_drawn import FAMILIES, family_layouts

    ds, _ = val
    layouts = family_layouts(FAMILIES["single_large"], 40, torch.Generator().manual_seed(0))
    doubles = doubled_canvases(ds, layouts, torch.Generator().manual_seed(1))
    score = detection_score(doubles, layouts)
    assert 1 - score["exact50"] >= 0.9 and score["ap50"] < 0.5
    assert mean_average_precision([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}],
                                  layout_targets(layouts[:1], (32, 32)))["ap50"] == 0.0
