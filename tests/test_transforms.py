"""Box-aware transforms: exact box coordinates after each transform, clipping and dropping, masks, skip policy."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from layoutdiffuse.conditions import collate
from layoutdiffuse.data.transforms import (BadImageError, LayoutTransform, SkipBadImages, clipped_area_fraction,
                                           read_image, select_objects)

H, W = 100, 120
BOXES = torch.tensor([[10.0, 20.0, 50.0, 60.0],     # inside
                      [100.0, 5.0, 120.0, 30.0],    # at the right edge
                      [0.0, 90.0, 120.0, 100.0]])   # full-width strip at the bottom
LABELS = torch.tensor([3, 7, 1])


def validate_layout(layout, num_classes):
    """The format of layout.py, row by row (its validate_layout mis-broadcasts its masks when N is not 1 or 5)."""
    from layoutdiffuse.layout import validate_layout as check
    for row in layout:
        check(row[None], num_classes)


def image(h=H, w=W):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8)


def coord_image(h, w):
    """Channel 0 holds the column index, channel 1 the row index: a crop's offset can be read back."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([xs, ys, torch.zeros_like(xs)]).to(torch.uint8)


def test_stretch_resize_keeps_normalised_boxes_exactly():
    s = LayoutTransform(64)(image(), BOXES, LABELS)
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert -1 <= s["image"].min() and s["image"].max() <= 1
    expected = torch.tensor([[10 / W, 20 / H, 40 / W, 40 / H, 3],
                             [100 / W, 5 / H, 20 / W, 25 / H, 7],
                             [0, 90 / H, 1, 10 / H, 1]])
    torch.testing.assert_close(s["layout"], expected, atol=1e-6, rtol=0)
    validate_layout(s["layout"], num_classes=8)


def test_stretch_to_non_square_size():
    s = LayoutTransform((32, 48))(image(), BOXES[:1], LABELS[:1])
    assert s["image"].shape == (3, 32, 48)
    torch.testing.assert_close(s["layout"], torch.tensor([[10 / W, 20 / H, 40 / W, 40 / H, 3]]), atol=1e-6, rtol=0)


def test_center_crop_clips_and_drops():
    # 100x120 -> shorter side 50: 50x60, centre crop 50x50 cuts 5 px off each side (left = 5).
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0],    # -> [5, 10, 25, 30] - 5 -> [0, 10, 20, 30]
                          [100.0, 5.0, 120.0, 30.0],   # -> [50, 2.5, 60, 15] - 5 -> [45, 2.5, 55, 15] -> clipped to x1 = 50
                          [112.0, 0.0, 120.0, 100.0],  # -> [56, 0, 60, 50] - 5 -> [51, ..] entirely outside: dropped
                          [0.0, 0.0, 12.0, 100.0],     # -> [0, 0, 6, 50] - 5 -> [-5, 0, 1, 50]: 1x50 = 2% left: dropped
                          [0.0, 0.0, 14.0, 100.0]])    # -> [-5, 0, 2, 50] -> 2x50 = 4% left: kept, clipped
    s = LayoutTransform(50, crop="center", min_object_size=0.02)(image(), boxes, torch.arange(5))
    expected = torch.tensor([[0, 10 / 50, 20 / 50, 20 / 50, 0],
                             [45 / 50, 2.5 / 50, 5 / 50, 12.5 / 50, 1],
                             [0, 0, 2 / 50, 1, 4]])
    torch.testing.assert_close(s["layout"], expected, atol=1e-6, rtol=0)
    validate_layout(s["layout"], num_classes=5)


def test_only_boxes_cut_by_the_crop_are_dropped_for_size():
    # 10x20 -> centre crop 10x10 (left = 5). The uncut box covers exactly 20% of the output and
    # stays even at threshold 0.2 (strict >): its size was the dataset filter's decision. The cut
    # one keeps 10%: kept at threshold 0.05, dropped at 0.2.
    boxes = torch.tensor([[5.0, 0.0, 7.0, 10.0],     # uncut: [0, 0, 2, 10]
                          [3.0, 0.0, 7.0, 5.0]])     # cut:   [-2, 0, 2, 5] -> [0, 0, 2, 5] = 10%: dropped
    s = LayoutTransform(10, crop="center", min_object_size=0.05)(image(10, 20), boxes, torch.tensor([0, 1]))
    torch.testing.assert_close(s["layout"], torch.tensor([[0, 0, 0.2, 1, 0], [0, 0, 0.2, 0.5, 1]]), atol=1e-6, rtol=0)
    s = LayoutTransform(10, crop="center", min_object_size=0.2)(image(10, 20), boxes, torch.tensor([0, 1]))
    torch.testing.assert_close(s["layout"], torch.tensor([[0, 0, 0.2, 1, 0]]), atol=1e-6, rtol=0)


def test_random_crop_boxes_follow_the_pixels():
    img = coord_image(60, 80)  # shorter side already 60: the crop is the only geometric change
    boxes = torch.tensor([[5.0, 5.0, 25.0, 55.0], [60.0, 10.0, 80.0, 20.0], [30.0, 0.0, 50.0, 60.0]])
    t = LayoutTransform(60, crop="random")
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        s = t(img, boxes, torch.arange(3))
        pixels = ((s["image"] + 1) / 2 * 255).round().long()
        left, top = int(pixels[0, 0, 0]), int(pixels[1, 0, 0])
        assert top == 0 and 0 <= left <= 20
        seen.add(left)
        x0 = (boxes[:, 0] - left).clamp(0, 60)
        x1 = (boxes[:, 2] - left).clamp(0, 60)
        keep = x1 > x0
        expected = torch.stack([x0 / 60, boxes[:, 1] / 60, (x1 - x0) / 60, (boxes[:, 3] - boxes[:, 1]) / 60,
                                torch.arange(3).float()], 1)[keep]
        torch.testing.assert_close(s["layout"], expected, atol=1e-6, rtol=0)
    assert len(seen) > 3  # the offset really is random


def test_horizontal_flip():
    s = LayoutTransform(64, flip=1.0)(image(), BOXES, LABELS)
    expected = torch.tensor([[1 - 50 / W, 20 / H, 40 / W, 40 / H, 3],
                             [0, 5 / H, 20 / W, 25 / H, 7],
                             [0, 90 / H, 1, 10 / H, 1]])
    torch.testing.assert_close(s["layout"], expected, atol=1e-6, rtol=0)
    img = coord_image(8, 10)
    flipped = LayoutTransform((8, 10), flip=1.0)(img)["image"]
    torch.testing.assert_close(flipped, LayoutTransform((8, 10))(img)["image"].flip(-1))


def test_flip_probability_is_used():
    t = LayoutTransform(16, flip=0.5)
    torch.manual_seed(0)
    xs = {round(float(t(image(), BOXES[:1], LABELS[:1])["layout"][0, 0]), 4) for _ in range(20)}
    assert xs == {round(10 / W, 4), round(1 - 50 / W, 4)}


def test_mask_moves_with_image_and_boxes():
    mask = torch.zeros(H, W, dtype=torch.uint8)
    mask[20:60, 10:50] = 5
    s = LayoutTransform(50, crop="center", flip=1.0)(image(), torch.tensor([[10.0, 20.0, 50.0, 60.0]]), torch.tensor([5]), mask=mask)
    assert s["mask"].shape == (50, 50) and s["mask"].dtype == torch.long
    ys, xs = torch.nonzero(s["mask"] == 5, as_tuple=True)
    x, y, w, h, _ = s["layout"][0].tolist()
    assert (xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1) == pytest.approx(
        (x * 50, y * 50, (x + w) * 50, (y + h) * 50))


def test_mask_of_another_size_is_resized_nearest_first():
    mask = torch.zeros(8, 8, dtype=torch.uint8)  # like CelebAMask-HQ: mask at half the image size
    mask[2:4, 4:8] = 3
    s = LayoutTransform(8)(image(16, 16), mask=mask)
    torch.testing.assert_close(s["mask"], mask.long())
    assert set(s["mask"].unique().tolist()) == {0, 3}
    assert s["layout"].shape == (0, 5)


def test_samples_collate_to_the_shared_batch_format():
    t = LayoutTransform(32)
    batch = collate([t(image(), BOXES, LABELS), t(image(), BOXES[:1], LABELS[:1]), t(image())])
    assert batch["image"].shape == (3, 3, 32, 32)
    assert batch["layout"].shape == (3, 3, 5)
    assert batch["layout"][1:, 1:, 4].eq(-1).all() and batch["layout"][2, 0, 4] == -1


@pytest.mark.parametrize("kwargs, message", [
    (dict(size=0), "size"), (dict(size=8, crop="middle"), "unknown crop 'middle'"),
    (dict(size=8, flip=2.0), "flip"), (dict(size=8, min_object_size=1.5), "min_object_size"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LayoutTransform(**kwargs)


def test_mismatched_boxes_and_labels():
    with pytest.raises(ValueError, match="3 boxes but 2 labels"):
        LayoutTransform(8)(image(), BOXES, LABELS[:2])


def test_read_image(tmp_path):
    Image.new("L", (6, 4), 128).save(tmp_path / "gray.png")
    img = read_image(tmp_path / "gray.png", expected_size=(6, 4))
    assert img.shape == (3, 4, 6) and img.dtype == torch.uint8
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(BadImageError, match="cannot decode image.*bad.jpg"):
        read_image(tmp_path / "bad.jpg")
    with pytest.raises(BadImageError, match="image file not found.*missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(BadImageError, match="is 6x4 but the annotations say 8x4"):
        read_image(tmp_path / "gray.png", expected_size=(8, 4))


class Flaky(SkipBadImages):
    def __init__(self, bad, n=5, **kw):
        super().__init__(**kw)
        self.bad, self.n = set(bad), n

    def __len__(self):
        return self.n

    def load(self, i):
        if i in self.bad:
            raise BadImageError(f"img{i}.jpg", "cannot decode image")
        return {"index": i}


def test_skip_policy_logs_counts_and_moves_on(caplog):
    ds = Flaky(bad={1, 2})
    with caplog.at_level(logging.WARNING):
        assert ds[1] == {"index": 3}
        assert ds[2] == {"index": 3}  # known bad: skipped without decoding or logging again
    assert ds.num_skipped == 2 and ds.skipped == ["img1.jpg", "img2.jpg"]
    assert "img1.jpg" in caplog.text and "2 bad image(s) skipped so far" in caplog.text
    assert ds[-1] == {"index": 4}
    with pytest.raises(IndexError):
        ds[5]


def test_raise_policy_and_broken_data():
    with pytest.raises(BadImageError, match="img1.jpg"):
        Flaky(bad={1}, on_bad_image="raise")[1]
    with pytest.raises(RuntimeError, match="data looks broken"):
        Flaky(bad=range(5))[0]
    with pytest.raises(ValueError, match="unknown on_bad_image 'ignore'"):
        Flaky(bad=(), on_bad_image="ignore")


def test_select_objects_groups_by_image_and_counts():
    obj_image = np.array([2, 0, 0, 1, 2, 0, 2])
    keep = np.array([1, 1, 0, 1, 1, 1, 1], dtype=bool)
    images, offsets, objects = select_objects(obj_image, keep, 4, min_objects=2, max_objects=3)
    assert images.tolist() == [0, 2]  # image 1 has 1 object, image 3 none
    assert offsets.tolist() == [0, 2, 5]
    assert objects.tolist() == [1, 5, 0, 4, 6]
    images, _, _ = select_objects(obj_image, keep, 4, 1, None, image_keep=np.array([1, 1, 0, 1], dtype=bool))
    assert images.tolist() == [0, 1]


def test_clipped_area_fraction():
    boxes = np.array([[0, 0, 10, 10], [35, 0, 10, 10], [-5, -5, 10, 10]])
    sizes = np.array([[40, 20]] * 3)
    np.testing.assert_allclose(clipped_area_fraction(boxes, sizes), [100 / 800, 50 / 800, 25 / 800])
