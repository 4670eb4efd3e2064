"""layoutdiffuse.evaluation: every formula against a closed form or a naive version written here."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from layoutdiffuse.layout import LayoutError, pad_layouts
from layoutdiffuse.evaluation import (
    DigitClassifier, FeatureFID, FeatureStatistics, LayoutAccuracy, confusion_matrix, crop_boxes, digit_fid, diversity,
    feature_statistics, frechet_distance, inception_fid, layout_accuracy, load_digit_classifier, pairwise_lpips,
)
from layoutdiffuse.evaluation.classifier import WEIGHTS, mnist_tensors, random_affine, save_digit_classifier

torch.set_num_threads(2)


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def mnist_test():
    """First 3000 MNIST-test digits ``(N, 1, 28, 28)`` in [-1, 1] and labels; skips when MNIST is absent."""
    try:
        x, y = mnist_tensors(False)
    except FileNotFoundError as err:
        pytest.skip(f"MNIST not under $LAYOUTDIFFUSE_DATA: {err}")
    return x[:3000], y[:3000]


@pytest.fixture(scope="module")
def classifier():
    return load_digit_classifier()


def compose_canvases(digits, labels, n, size=64, tight=False, seed=0):
    """Synthetic Layout-MNIST: 1-4 digits per canvas, one per quadrant, each scaled into its box with F.interpolate.

    ``tight=False`` pastes the whole 28x28 MNIST image into a box of random size and aspect;
    ``tight=True`` pastes the ink's bounding box only, into a box of the ink's aspect (+-10%). Returns ``images (n, 1, size, size)`` in [-1, 1], ``layout (n, 4, 5)``.
    """
    g = torch.Generator().manual_seed(seed)
    canvases = torch.zeros(n, 1, size, size)
    layouts, k = [], 0
    q = size // 2
    for i in range(n):
        rows = []
        count = int(torch.randint(1, 5, (1,), generator=g))
        for quadrant in torch.randperm(4, generator=g)[:count].tolist():
            d = (digits[k % len(digits)] + 1) / 2
            c = int(labels[k % len(labels)])
            k += 1
            bw, bh = (int(v) for v in torch.randint(q * 9 // 16, q + 1, (2,), generator=g))
            if tight:
                ys, xs = (d[0] > 0.2).nonzero(as_tuple=True)
                d = d[:, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
                scale = max(bw, bh) / max(d.shape[1:])
                jitter = 0.9 + 0.2 * float(torch.rand(1, generator=g))
                bw, bh = (min(q, max(2, round(d.shape[2] * scale * jitter))), min(q, max(2, round(d.shape[1] * scale / jitter))))
            x0 = (quadrant % 2) * q + int(torch.randint(0, q - bw + 1, (1,), generator=g))
            y0 = (quadrant // 2) * q + int(torch.randint(0, q - bh + 1, (1,), generator=g))
            patch = F.interpolate(d[None], size=(bh, bw), mode="bilinear", antialias=True, align_corners=False)[0]
            region = canvases[i, :, y0 : y0 + bh, x0 : x0 + bw]
            canvases[i, :, y0 : y0 + bh, x0 : x0 + bw] = torch.maximum(region, patch)
            rows.append([x0 / size, y0 / size, bw / size, bh / size, c])
        layouts.append(torch.tensor(rows, dtype=torch.float32))
    return canvases * 2 - 1, pad_layouts(layouts, length=4)


def random_spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# --------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_1d_closed_form():
    for m1, m2, s1, s2 in [(0.0, 0.0, 1.0, 1.0), (1.5, -0.5, 2.0, 0.3), (3.0, 3.0, 0.01, 9.0)]:
        expected = (m1 - m2) ** 2 + s1 + s2 - 2 * math.sqrt(s1 * s2)
        t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        got = frechet_distance(t([m1]), t([[s1]]), t([m2]), t([[s2]]))
        assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_frechet_distance_diagonal_closed_form():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    v1, v2 = torch.rand(7, generator=g, dtype=torch.float64) + 0.1, torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    expected = float(((mu1 - mu2) ** 2 + v1 + v2 - 2 * (v1 * v2).sqrt()).sum())
    assert frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_frechet_distance_matches_scipy_sqrtm(d):
    scipy_linalg = pytest.importorskip("scipy.linalg")
    s1, s2 = random_spd(d, 1), random_spd(d, 2)
    mu1, mu2 = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    covmean = scipy_linalg.sqrtm(s1.numpy() @ s2.numpy())
    expected = float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * np.trace(covmean).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-8)  # symmetric
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9 * float(s1.trace()))


def test_frechet_distance_singular_covariances():
    # rank-deficient covariances (fewer samples than dims): still finite and >= 0
    f1, f2 = torch.randn(5, 20, dtype=torch.float64), torch.randn(5, 20, dtype=torch.float64) + 1
    value = frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    assert math.isfinite(value) and value > 0
    assert frechet_distance(*feature_statistics(f1), *feature_statistics(f1)) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_shape_errors():
    with pytest.raises(ValueError, match=r"sigma2 must be a \(D, D\)"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(4))
    with pytest.raises(ValueError, match="same length"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2))


def test_feature_statistics_match_numpy_and_batching():
    f = (torch.randn(257, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3 + 2).float().double()  # exact in fp32
    mu, sigma = feature_statistics(f)
    assert torch.allclose(mu, f.mean(0))
    np.testing.assert_allclose(sigma.numpy(), np.cov(f.numpy(), rowvar=False), rtol=1e-10, atol=1e-12)
    stats = FeatureStatistics()
    for chunk in f.split(50):
        stats.update(chunk.float().double())  # lossless: f holds fp32 values
    mu_b, sigma_b = stats.compute()
    assert torch.allclose(mu_b, mu) and torch.allclose(sigma_b, sigma, atol=1e-10)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(f[:1])
    with pytest.raises(ValueError, match="dimension 3"):
        stats.update(torch.zeros(4, 3))


# --------------------------------------------------------------------------- FID with injected extractors


class PooledProjection(nn.Module):
    """A fixed feature network for tests: 4x4 average pool of the image, flattened, random projection to 8-d."""

    def __init__(self, channels=3, size=16):
        super().__init__()
        self.proj = nn.Linear(channels * 16, 8)

    def forward(self, x):
        return self.proj(F.adaptive_avg_pool2d(x.float(), 4).flatten(1))


def test_feature_fid_equals_direct_statistics():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(120, 3, 16, 16, generator=g) * 2 - 1, torch.rand(90, 3, 16, 16, generator=g) - 0.5
    net = PooledProjection()
    metric = FeatureFID(net, batch_size=32)
    metric.update(a, real=True)
    metric.update(list(b.split(40)), real=False)  # an iterable of batches
    with torch.no_grad():
        expected = frechet_distance(*feature_statistics(net(a)), *feature_statistics(net(b)))
    assert metric.compute() == pytest.approx(expected, rel=1e-6)
    # same set with itself: ~0; precomputed real statistics give the same number
    metric.reset()
    metric.update(a, real=False)
    assert metric.compute() == pytest.approx(0.0, abs=1e-8)
    fixed = FeatureFID(net)
    fixed.set_real_statistics(*metric.real_statistics())
    fixed.update(b, real=False)
    assert fixed.compute() == pytest.approx(expected, rel=1e-6)


def test_feature_fid_rejects_bad_extractor_output():
    metric = FeatureFID(lambda x: x.flatten(), batch_size=8)
    with pytest.raises(ValueError, match=r"must return \(batch, D\)"):
        metric.update(torch.zeros(4, 1, 3, 3), real=True)


def test_inception_fid_with_injected_feature_module_matches_feature_fid():
    """The torchmetrics path with a custom ``feature`` module agrees with FeatureFID on the same features."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(64, 1, 16, 16, generator=g) * 2 - 1, torch.rand(48, 1, 16, 16, generator=g) * 1.5 - 1
    net = PooledProjection().eval()
    got = inception_fid(a, b, feature_extractor=net, batch_size=20)

    def rgb01(x):  # inception_fid's input convention: RGB in [0, 1]
        return net(((x + 1) / 2).expand(-1, 3, -1, -1))

    metric = FeatureFID(rgb01)
    metric.update(a, real=True)
    metric.update(b, real=False)
    assert got == pytest.approx(metric.compute(), rel=1e-4)


def test_inception_fid_without_local_weights_fails_clearly(tmp_path):
    x = torch.zeros(4, 1, 16, 16)
    with pytest.raises((ModuleNotFoundError, FileNotFoundError), match="feature_extractor"):
        inception_fid(x, x, weights_path=tmp_path / "missing.pth")


# --------------------------------------------------------------------------- classifier


def test_shipped_classifier_accuracy(mnist_test, classifier):
    x, y = mnist_test
    with torch.no_grad():
        acc = (classifier(x[:2000]).argmax(1) == y[:2000]).float().mean().item()
    assert acc >= 0.99, f"shipped digit classifier: {acc:.4f} on 2000 MNIST-test images"
    record = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert record["test_accuracy"] >= 0.99 and record["command"].startswith("python -m layoutdiffuse.evaluation.train_classifier")
    assert classifier.info["test_accuracy"] == record["test_accuracy"]


def test_classifier_shapes_any_canvas_size(classifier):
    for shape in [(2, 1, 28, 28), (3, 1, 64, 64), (2, 3, 48, 80)]:
        x = torch.rand(shape) * 2 - 1
        assert classifier.features(x).shape == (shape[0], 128)
        assert classifier(x).shape == (shape[0], 10)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\) or \(B, 3, H, W\)"):
        classifier(torch.zeros(1, 2, 28, 28))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = DigitClassifier().eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    save_digit_classifier(model, tmp_path / "c.safetensors", {"test_accuracy": 0.5})
    loaded = load_digit_classifier(tmp_path / "c.safetensors")
    x = torch.rand(4, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=2e-2)  # fp16 storage
    assert loaded.info["test_accuracy"] == 0.5 and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        load_digit_classifier(tmp_path / "absent.safetensors")


def test_random_affine_identity_and_range():
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    same = random_affine(x, degrees=0, scale=(1, 1), aspect=0, shear=0, translate=0)
    assert torch.allclose(same, x, atol=1e-5)
    warped = random_affine(x, generator=torch.Generator().manual_seed(0))
    assert warped.shape == x.shape and warped.min() >= -1 - 1e-6 and warped.max() <= 1 + 1e-6


# --------------------------------------------------------------------------- box crops


def naive_roi_crop(image, box, size):
    """roi_align(aligned=True, sampling_ratio=-1) of one box, written from its definition.

    ``image (C, H, W)``, ``box = (x0, y0, x1, y1)`` in pixels. Each of the ``size x size`` cells
    averages ``ceil(roi/size)``^2 bilinear samples; beyond ``[-1, H]`` a sample reads 0, inside it
    the coordinate is clamped to the image.
    """
    c, h, w = image.shape
    v = image.tolist()
    x0, y0, x1, y1 = (float(t) - 0.5 for t in box)
    bin_w, bin_h = (x1 - x0) / size, (y1 - y0) / size
    gx, gy = math.ceil((x1 - x0) / size), math.ceil((y1 - y0) / size)

    def sample(ch, y, x):
        if y < -1 or y > h or x < -1 or x > w:
            return 0.0
        y, x = max(y, 0.0), max(x, 0.0)
        yl, xl = int(y), int(x)
        if yl >= h - 1:
            yl = yh = h - 1
            y = float(yl)
        else:
            yh = yl + 1
        if xl >= w - 1:
            xl = xh = w - 1
            x = float(xl)
        else:
            xh = xl + 1
        ly, lx = y - yl, x - xl
        return (1 - ly) * (1 - lx) * v[ch][yl][xl] + (1 - ly) * lx * v[ch][yl][xh] + ly * (1 - lx) * v[ch][yh][xl] + ly * lx * v[ch][yh][xh]

    out = torch.zeros(c, size, size)
    for ch in range(c):
        for i in range(size):
            for j in range(size):
                acc = 0.0
                for iy in range(gy):
                    for ix in range(gx):
                        acc += sample(ch, y0 + i * bin_h + (iy + 0.5) * bin_h / gy, x0 + j * bin_w + (ix + 0.5) * bin_w / gx)
                out[ch, i, j] = acc / (gx * gy)
    return out


def test_crop_boxes_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 2, 40, 50, generator=g) * 2 - 1
    layout = torch.tensor([
        [[0.1, 0.2, 0.3, 0.5, 3], [0.0, 0.0, 1.0, 1.0, 7], [0, 0, 0, 0, -1], [0.8, 0.75, 0.2, 0.25, 1]],  # padding row in the middle
        [[0.51, 0.33, 0.05, 0.07, 0], [0.3, 0.0, 0.7, 0.4, 9], [0, 0, 0, 0, -1], [0, 0, 0, 0, -1]],
    ])
    for margin, square in [(0.0, False), (0.2, False), (0.2, True), (0.0, True)]:
        crops, index, labels = crop_boxes(images, layout, size=12, margin=margin, square=square)
        assert crops.shape == (5, 2, 12, 12)
        assert index.tolist() == [0, 0, 0, 1, 1] and labels.tolist() == [3, 7, 1, 0, 9]
        rows = layout[layout[..., 4] >= 0]
        for k, (x, y, w, h, _) in enumerate(rows.tolist()):
            box = ((x - margin * w) * 50, (y - margin * h) * 40, (x + (1 + margin) * w) * 50, (y + (1 + margin) * h) * 40)
            if square:  # the square of side max(w, h) in pixels, grown by the margin, on the box centre
                cx, cy, side = (x + w / 2) * 50, (y + h / 2) * 40, max(w * 50, h * 40) * (1 + 2 * margin)
                box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            expected = naive_roi_crop((images[index[k]] + 1) / 2, box, 12) * 2 - 1
            torch.testing.assert_close(crops[k], expected, atol=1e-5, rtol=0)


def test_crop_boxes_exact_pixel_boxes_equal_slicing():
    """A 28 px box is the slice itself; a 56 px box is the slice average-pooled 2x2."""
    images = torch.rand(1, 1, 112, 112) * 2 - 1
    layout = torch.tensor([[[10 / 112, 20 / 112, 28 / 112, 28 / 112, 1], [50 / 112, 40 / 112, 56 / 112, 56 / 112, 2]]])
    crops, _, _ = crop_boxes(images, layout)
    torch.testing.assert_close(crops[0], images[0, :, 20:48, 10:38], atol=1e-5, rtol=0)
    torch.testing.assert_close(crops[1], F.avg_pool2d(images[0, :, 40:96, 50:106], 2), atol=1e-5, rtol=0)


def test_crop_boxes_errors():
    images = torch.zeros(2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"\(B, N, 5\) with B = 2"):
        crop_boxes(images, torch.zeros(3, 1, 5))
    with pytest.raises(LayoutError, match="class"):
        crop_boxes(images, torch.tensor([[[0.1, 0.1, 0.2, 0.2, 12.0]]] * 2))
    with pytest.raises(ValueError, match="margin must be >= 0"):
        crop_boxes(images, torch.zeros(2, 0, 5), margin=-0.1)
    crops, index, labels = crop_boxes(images, torch.zeros(2, 0, 5))  # empty layouts: no crops
    assert crops.shape == (0, 1, 28, 28) and len(index) == len(labels) == 0


# --------------------------------------------------------------------------- layout accuracy


def test_confusion_matrix_matches_loop():
    g = torch.Generator().manual_seed(0)
    labels, preds = torch.randint(0, 10, (300,), generator=g), torch.randint(0, 10, (300,), generator=g)
    expected = torch.zeros(10, 10, dtype=torch.long)
    for t, p in zip(labels.tolist(), preds.tolist()):
        expected[t, p] += 1
    assert torch.equal(confusion_matrix(labels, preds), expected)


# tight boxes: the square region around a narrow digit can take in bits of its neighbours, hence 0.95
@pytest.mark.parametrize("tight, margin, square, floor", [(False, 0.0, False, 0.97), (True, 0.2, True, 0.95)])
def test_layout_accuracy_synthetic_canvases(mnist_test, classifier, tight, margin, square, floor):
    x, y = mnist_test
    images, layout = compose_canvases(x, y, n=150, tight=tight)
    n_boxes = int((layout[..., 4] >= 0).sum())
    result = layout_accuracy(images, layout, classifier=classifier, margin=margin, square=square)
    assert result.count == n_boxes == int(result.confusion.sum())
    assert result.accuracy >= floor, f"accuracy {result.accuracy:.3f} on synthetic canvases (tight={tight})"
    rows = result.confusion.sum(1)
    per_class = result.confusion.diagonal().double() / rows
    torch.testing.assert_close(result.per_class, per_class, equal_nan=True)
    assert result.accuracy == pytest.approx(float(result.confusion.diagonal().sum()) / n_boxes)
    # shuffled labels: chance level (about 0.1)
    valid = layout[..., 4] >= 0
    shuffled = layout.clone()
    shuffled[..., 4][valid] = layout[..., 4][valid][torch.randperm(int(valid.sum()), generator=torch.Generator().manual_seed(0))]
    chance = layout_accuracy(images, shuffled, classifier=classifier, margin=margin, square=square).accuracy
    assert 0.03 <= chance <= 0.2, f"shuffled-label accuracy {chance:.3f} should be ~0.1"


def test_layout_accuracy_accumulates_and_ignores_padding(mnist_test, classifier):
    x, y = mnist_test
    images, layout = compose_canvases(x, y, n=20, seed=3)
    whole = layout_accuracy(images, layout, classifier=classifier)
    metric = LayoutAccuracy(classifier)
    metric.update(images[:7], layout[:7])
    metric.update(images[7:], torch.cat([layout[7:], torch.full((13, 3, 5), -1.0)], dim=1))  # extra padding rows
    assert torch.equal(metric.compute().confusion, whole.confusion)
    assert layout_accuracy(images[:2], torch.zeros(2, 0, 5), classifier=classifier).count == 0


# --------------------------------------------------------------------------- digit-FID on canvases


def test_digit_fid_orders_sets(mnist_test, classifier):
    x, y = mnist_test
    a, _ = compose_canvases(x[:1500], y[:1500], n=200, size=48, seed=1)
    b, _ = compose_canvases(x[1500:], y[1500:], n=200, size=48, seed=2)
    same_kind = digit_fid(a, b, classifier=classifier)
    metric = FeatureFID(classifier.features)  # digit_fid's features, real statistics computed once
    metric.update(a, real=True)

    def fid_to(images):
        metric.reset()
        metric.update(images, real=False)
        return metric.compute()

    assert fid_to(b) == pytest.approx(same_kind, rel=1e-9)
    assert fid_to(a) == pytest.approx(0.0, abs=1e-6)
    blurred = fid_to(F.avg_pool2d(b, 3, stride=1, padding=1, count_include_pad=False))
    noise = fid_to(torch.rand_like(b) * 2 - 1)
    assert 0 < same_kind < blurred < noise


# --------------------------------------------------------------------------- diversity


def naive_lpips(a, b, classifier):
    """Digit-LPIPS of two images ``(C, H, W)``, cell by cell as in the formula."""
    total = 0.0
    with torch.no_grad():
        for ya, yb in zip(classifier.feature_maps(a[None]), classifier.feature_maps(b[None])):
            ua = ya[0] / (ya[0].norm(dim=0, keepdim=True) + 1e-10)
            ub = yb[0] / (yb[0].norm(dim=0, keepdim=True) + 1e-10)
            h, w = ua.shape[1:]
            total += sum(float((ua[:, i, j] - ub[:, i, j]).square().sum()) for i in range(h) for j in range(w)) / (h * w)
    return total


def test_diversity_identical_zero_distinct_positive(mnist_test, classifier):
    x, y = mnist_test
    images, _ = compose_canvases(x, y, n=4, size=32, seed=5)
    assert diversity(images[:1].repeat(5, 1, 1, 1), classifier) == 0.0
    d = pairwise_lpips(images, classifier)
    assert torch.equal(d, d.T) and torch.all(d.diagonal() == 0)
    for i, j in [(0, 1), (1, 3), (2, 3)]:
        assert d[i, j].item() == pytest.approx(naive_lpips(images[i], images[j], classifier), rel=1e-5)
    value = diversity(images, classifier)
    assert value > 0 and value == pytest.approx(float(d[torch.triu_indices(4, 4, 1).unbind()].mean()))
    # (L, K, C, H, W): mean over layouts
    groups = torch.stack([images, images[:1].repeat(4, 1, 1, 1)])
    assert diversity(groups, classifier) == pytest.approx(value / 2)
    with pytest.raises(ValueError, match="K >= 2"):
        diversity(images[:1], classifier)
