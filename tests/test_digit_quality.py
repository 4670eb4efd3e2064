"""Reading samples as digits: the confident share is fooled by noise; the in-distribution check is not."""
import pytest
import torch

from layoutdiffuse.errors import UserError
from layoutdiffuse.evaluation.classifier import load_digit_classifier, mnist_tensors
from layoutdiffuse.evaluation.digit_quality import at_28, confident_fraction, digit_fraction, fit_reference


@pytest.fixture(scope="module")
def setup(mnist_root):
    classifier = load_digit_classifier()
    x, y = mnist_tensors(True, mnist_root)
    test = mnist_tensors(False, mnist_root)[0]
    return classifier, fit_reference(classifier, (x[:2000], y[:2000]), test[:1000], quantile=0.99), test[1000:1500]


def test_noise_is_confident_but_not_a_digit(setup):
    classifier, ref, real = setup
    g = torch.Generator().manual_seed(0)
    fakes = {"noise": torch.randn(64, 1, 28, 28, generator=g).clamp(-1, 1), "white": torch.ones(16, 1, 28, 28),
             "blurred noise": torch.nn.functional.avg_pool2d(torch.randn(64, 1, 28, 28, generator=g), 5, 1, 2).mul(3).clamp(-1, 1)}
    for name, images in fakes.items():
        assert confident_fraction(images, classifier=classifier) > 0.9, name  # why confidence alone is no evidence
        assert digit_fraction(images, classifier=classifier, reference=ref) == 0.0, name
    # held-out real digits: most are in the radius (0.99 of another held-out set) and confident
    assert digit_fraction(real, classifier=classifier, reference=ref) > 0.8
    assert digit_fraction(real, classifier=classifier, reference=ref) <= confident_fraction(real, classifier=classifier)


def test_mahalanobis_distance_matches_a_naive_loop(setup):
    _, ref, _ = setup
    f = torch.randn(5, ref.means.shape[1])
    naive = torch.stack([min(((x - m) @ ref.precision @ (x - m)).clamp(min=0).sqrt() for m in ref.means) for x in f])
    assert torch.allclose(ref.distance(f), naive, rtol=1e-4)


def test_32px_samples_are_read_at_28px():
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert at_28(x).shape == (2, 1, 28, 28)
    assert at_28(x[:, :, :28, :28]) is not None and torch.equal(at_28(x[:, :, :28, :28]), x[:, :, :28, :28])
    with pytest.raises(UserError, match="threshold must be in"):
        confident_fraction(x, threshold=1.5)


def test_digit_report_equals_the_separate_measures(setup, mnist_root):
    """One classifier pass gives what the separate functions give; label accuracy against a naive count."""
    from layoutdiffuse.evaluation.digit_quality import digit_report

    classifier, ref, real = setup
    images = torch.cat([real[:40], torch.randn(20, 1, 28, 28, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)])
    _, y_test = mnist_tensors(False, mnist_root)
    labels = torch.cat([y_test[1000:1040], torch.zeros(20, dtype=torch.long)])
    report = digit_report(images, labels, classifier=classifier, reference=ref)
    assert report["confident_fraction"] == round(confident_fraction(images, classifier=classifier), 4)
    assert report["digit_fraction"] == round(digit_fraction(images, classifier=classifier, reference=ref), 4)
    predicted = [int(classifier(at_28(images[i : i + 1])).argmax()) for i in range(len(images))]
    assert report["label_accuracy"] == round(sum(p == int(l) for p, l in zip(predicted, labels)) / len(images), 4)
