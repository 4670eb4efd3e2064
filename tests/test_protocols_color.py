"""The colour Layout-MNIST protocols: pinned phrases and colours, phrase layouts reaching the model, the
colour judge's scores against their real ceilings, and models that cannot read a protocol refused."""
import re
from types import SimpleNamespace

import pytest
import torch

from layoutdiffuse.data.color_phrases import COLOURS, HELD_OUT_PAIRS, SEEN_PAIRS
from layoutdiffuse.errors import UserError
from layoutdiffuse.evaluation.protocol_run import default_scorers, evaluate_protocol
from layoutdiffuse.evaluation.protocols import get_protocol, layouts_sha256, load_protocol_data
from layoutdiffuse.evaluation.protocols.layouts import real_images
from layoutdiffuse.layout import validity

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def read_phrase(text: str) -> tuple[int, int]:
    """(digit, colour id) named by a grammar phrase (an independent reading: words of the phrase)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    digit = [int(w) if w.isdigit() else WORDS.index(w) for w in words if w.isdigit() or w in WORDS]
    colour = [COLOURS.index(w) for w in words if w in COLOURS]
    assert len(digit) == 1 and len(colour) == 1, text
    return digit[0], colour[0]


class Replayer:
    """A stand-in phrase model that draws the protocol's real canvases (channels rolled by ``roll``: every
    colour becomes another, the grey canvas stays the same). It checks that each box's phrase names the
    box's digit and colour."""

    def __init__(self, data, roll: int = 0, channels: int = 3):
        self.image_shape = (channels, 32, 32)
        self.sampling_args = {"sampler": "replay", "steps": 1, "guidance": 1.0}
        self.device = torch.device("cpu")
        self.model = SimpleNamespace(adaptor=object(), num_classes=None)
        self.is_phrase_model, self.label_names = True, []
        real = real_images(get_protocol("layout-mnist-color"), data, "layouts")
        self.by_layout = {self.key(layout): image.roll(roll, 0) for layout, image in zip(data.sampling_layouts(), real)}
        self.truth = {self.key(layout): (digits, colours) for layout, digits, colours in zip(data.sampling_layouts(), data.layouts, data.colours)}

    @staticmethod
    def key(layout: torch.Tensor) -> bytes:
        return layout[validity(layout)].numpy().tobytes()

    def sample(self, n, cond=None, generator=None, progress=False, **opts):
        images = []
        for layout, texts in zip(cond["layout"], cond["box_text"]):
            digits, colours = self.truth[self.key(layout)]
            assert [read_phrase(t) for t in texts] == list(zip(digits[validity(digits)][:, 4].long().tolist(), colours[colours >= 0].tolist()))
            images.append(self.by_layout[self.key(layout)])
        return torch.stack(images)


@pytest.fixture(scope="module")
def colour_data(mnist_root):
    return load_protocol_data(get_protocol("layout-mnist-color"), str(mnist_root))


def test_colour_protocols_pin_their_layouts_phrases_and_pairs(mnist_root, colour_data):
    held = load_protocol_data(get_protocol("layout-mnist-color-held-out"), str(mnist_root))
    for data, pairs in ((colour_data, set(SEEN_PAIRS)), (held, set(HELD_OUT_PAIRS))):
        assert data.layouts.shape[0] == 250
        rows = validity(data.layouts)
        asked = {(int(d), int(c)) for d, c in zip(data.layouts[rows][:, 4].tolist(), data.colours[rows].tolist())}
        assert asked <= pairs and len(asked) >= 10
        named = [read_phrase(data.phrases[i]) for i in data.sampling_layouts()[rows][:, 4].long().tolist()]
        assert named == list(zip(data.layouts[rows][:, 4].long().tolist(), data.colours[rows].tolist()))
    assert torch.equal(held.layouts, colour_data.layouts)  # the same boxes and digits, other colours and phrases
    with pytest.raises(UserError, match="layouts changed"):
        load_protocol_data(get_protocol("layout-mnist-color").replace(layouts_sha256="0" * 64), str(mnist_root))


def test_the_layouts_hash_sees_phrases_and_colours(colour_data):
    d = colour_data
    texts = [[d.phrases[i] for i in row[row >= 0].tolist()] for row in d.phrase_index]
    base = layouts_sha256(d.layouts, texts, d.colours)
    assert base == d.layouts_sha256 and base != layouts_sha256(d.layouts)
    other = [list(t) for t in texts]
    other[3][0] = other[3][0] + " "
    assert layouts_sha256(d.layouts, other, d.colours) != base
    colours = d.colours.clone()
    colours[0, 0] = (colours[0, 0] + 1) % 6
    assert layouts_sha256(d.layouts, texts, colours) != base


def run(mnist_root, tmp_path, module, limit=6):
    protocol = get_protocol("layout-mnist-color").replace(bootstrap={"resamples": 10, "level": 0.95, "seed": 0})
    return evaluate_protocol(protocol, tmp_path / "run", limit=limit, root=str(mnist_root), module=module,
                             scorers=default_scorers(protocol), cache=None)


def test_real_canvases_score_their_ceilings_and_other_colours_score_zero(mnist_root, colour_data, tmp_path):
    scores = run(mnist_root, tmp_path / "real", Replayer(colour_data))["scores"]
    for key in ("colour_accuracy", "both_accuracy", "layout_accuracy"):
        assert scores[key]["value"] == scores[key]["real_ceiling"] and scores[key]["value"] > 0.8, key
    assert scores["detection"]["ap50"]["value"] == scores["detection"]["ap50"]["real_ceiling"]
    rolled = run(mnist_root, tmp_path / "rolled", Replayer(colour_data, roll=1))["scores"]
    assert rolled["colour_accuracy"]["value"] == 0 and rolled["both_accuracy"]["value"] == 0
    assert rolled["layout_accuracy"]["value"] == scores["layout_accuracy"]["value"]  # the grey canvas is the same
    assert rolled["detection"]["ap50"]["value"] == scores["detection"]["ap50"]["value"]
    assert "colour accuracy" in (tmp_path / "real" / "run" / "report.md").read_text()


def test_colour_fid_compares_grey_canvases_with_grey_references(mnist_root, colour_data, tmp_path):
    """FID sees both sides through the same view: the naive version from the grey canvases' features."""
    from layoutdiffuse.evaluation.color_judge import grey_canvas
    from layoutdiffuse.evaluation.fid import FeatureStatistics, frechet_distance
    from layoutdiffuse.evaluation.protocol_run import quantized

    protocol = get_protocol("layout-mnist-color").replace(bootstrap={"resamples": 2, "level": 0.95, "seed": 0})
    scorers = default_scorers(protocol)
    for cache in (tmp_path / "cache", tmp_path / "cache"):  # computed, then read from the cache
        fid = evaluate_protocol(protocol, tmp_path / "run", limit=4, root=str(mnist_root), module=Replayer(colour_data), scorers=scorers,
                                cache=cache)["scores"]["fid"]
        stats = []
        for images in (real_images(protocol, colour_data, "layouts", 4).repeat_interleave(2, 0), real_images(protocol, colour_data, "reference")):
            s = FeatureStatistics()
            s.update(scorers.extractor(grey_canvas(quantized(images))).double())
            stats.append(s.compute())
        assert abs(fid["value"] - frechet_distance(*stats[1], *stats[0])) < 1e-6 * max(1.0, fid["value"])


def test_a_model_that_cannot_read_the_protocol_is_refused(mnist_root, colour_data, tmp_path):
    from test_protocols import BoxPainter

    with pytest.raises(UserError, match="gives a phrase per box; this model reads the classes"):
        run(mnist_root, tmp_path / "a", BoxPainter(32, 3))
    with pytest.raises(UserError, match="3-channel images, the checkpoint makes 1-channel"):
        run(mnist_root, tmp_path / "b", Replayer(colour_data, channels=1))
    with pytest.raises(UserError, match="gives a class per box; this model reads a phrase per box"):
        evaluate_protocol("layout-mnist", tmp_path / "c", limit=2, root=str(mnist_root), module=Replayer(colour_data), cache=None)
