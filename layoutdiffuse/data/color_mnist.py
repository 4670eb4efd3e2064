"""Colour Layout-MNIST: Layout-MNIST canvases in RGB, each digit in one of six colours, with a phrase per box.

The boxes, digits and their placement are :class:`~layoutdiffuse.data.layout_mnist.LayoutMNIST`'s
(same arguments, same rules). Each digit then gets a colour (:data:`~layoutdiffuse.data.color_phrases.COLOURS`,
pure RGB corners; the canvas is the pixel-wise max of ink intensity times colour on black) and a
phrase from the grammar of :mod:`~layoutdiffuse.data.color_phrases` (its form and numeral-or-word
drawn uniformly). The ten held-out (digit, colour) pairs never appear with ``pairs="seen"``, the only
choice for the ``train`` split; ``pairs="held_out"`` colours every digit with its held-out colour
(to measure what a text model composes).

Sample::

    image    (3, S, S) float in [-1, 1], background exactly -1
    layout   (n, 5)    rows (x, y, w, h, class): class = the digit (labels="text") or the index of its
                       (digit, colour) pair in SEEN_PAIRS (labels="pair", the class-table baseline)
    box_text list of n phrases, one per layout row (labels="text" only)
    mask     (S, S)    long digit classes, 255 background
    digits, colours, forms  (max_digits,) long, -1 padding: MNIST index, colour id, phrase-form id
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..errors import UserError
from .color_phrases import PHRASE_FORMS, RGB, SEEN_PAIRS, allowed_colours, pair_name, phrase
from .layout_mnist import LayoutMNIST

PAIR_SPLITS = ("seen", "held_out")
LABELS = ("text", "pair")


class ColorLayoutMNIST(LayoutMNIST):
    """RGB canvases of coloured MNIST digits with a phrase per box (see the module docstring).

    Args: as :class:`~layoutdiffuse.data.layout_mnist.LayoutMNIST`, plus
        pairs: ``"seen"`` (the fifty training pairs) or ``"held_out"`` (every digit in its held-out
            colour; not allowed for ``train``).
        labels: ``"text"`` (a phrase per box, the layout's class is the digit) or ``"pair"`` (the
            class-table baseline: class = seen-pair index, no phrases).
        forms: the phrase forms drawn from (default: all of :data:`~layoutdiffuse.data.color_phrases.PHRASE_FORMS`).
    """

    def __init__(self, *args: Any, pairs: str = "seen", labels: str = "text", forms: Sequence[str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if pairs not in PAIR_SPLITS:
            raise UserError(f"unknown pairs '{pairs}'; choose one of: {', '.join(PAIR_SPLITS)}")
        if pairs == "held_out" and self.split == "train":
            raise UserError("the held-out (digit, colour) pairs never appear in training: pairs='held_out' needs split='val'")
        if labels not in LABELS:
            raise UserError(f"unknown labels '{labels}'; choose one of: {', '.join(LABELS)}")
        if labels == "pair" and pairs == "held_out":
            raise UserError("the pair-class baseline has no class for a held-out pair; use labels='text'")
        forms = tuple(PHRASE_FORMS) if forms is None else tuple(forms)
        if not forms or set(forms) - set(PHRASE_FORMS):
            raise UserError(f"unknown phrase forms {sorted(set(forms) - set(PHRASE_FORMS)) or '(none given)'}; choose from: {', '.join(PHRASE_FORMS)}")
        self.pairs, self.labels_kind, self.forms = pairs, labels, forms
        self.num_classes = len(SEEN_PAIRS) if labels == "pair" else 10
        self.class_names = [pair_name(d, c) for d, c in SEEN_PAIRS] if labels == "pair" else [str(d) for d in range(10)]
        self.classes = tuple(self.class_names)

    def colour_generator(self, index: int) -> np.random.Generator:
        """The item's colour and phrase RNG (independent of the placement's)."""
        return np.random.default_rng([self.seed, ("train", "val").index(self.split), index, 1])

    def colours_and_forms(self, index: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per digit: a colour id allowed for its pair split, a phrase-form id (into ``self.forms``) and
        whether the digit is written as a word."""
        rng = self.colour_generator(index)
        held_out = self.pairs == "held_out"
        colours = np.array([rng.choice(allowed_colours(int(d), held_out)) for d in labels], np.int64)
        forms = rng.integers(0, len(self.forms), len(labels))
        words = rng.random(len(labels)) < 0.5
        return colours, forms, words

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = super().__getitem__(index)
        n = len(item["layout"])
        picked = item["digits"][:n]
        labels = self.labels[picked].numpy()
        colours, forms, words = self.colours_and_forms(int(index) % self.length, labels)
        image = torch.full((3, self.canvas_size, self.canvas_size), 0.0)
        boxes = (item["layout"][:, :4] * self.canvas_size).round().long()
        for d, c, (x, y, w, h) in zip(picked.tolist(), colours.tolist(), boxes.tolist()):
            ink, _ = self.render(np.array([d]), np.array([[x, y, w, h]]))
            torch.maximum(image, ink[None] * torch.tensor(RGB[c])[:, None, None], out=image)
        item["image"] = image.mul_(2).sub_(1)
        pad = torch.full((self.max_digits,), -1, dtype=torch.long)
        item["colours"], item["forms"] = pad.clone(), pad.clone()
        item["colours"][:n], item["forms"][:n] = torch.from_numpy(colours), torch.from_numpy(forms)
        if self.labels_kind == "pair":
            index_of = {p: i for i, p in enumerate(SEEN_PAIRS)}
            item["layout"][:, 4] = torch.tensor([float(index_of[(int(d), int(c))]) for d, c in zip(labels, colours)])
        else:
            item["box_text"] = [phrase(int(d), int(c), self.forms[f], bool(w)) for d, c, f, w in zip(labels, colours, forms, words)]
        return item

    def __repr__(self) -> str:
        return super().__repr__().replace("LayoutMNIST(", f"ColorLayoutMNIST(pairs={self.pairs!r}, labels={self.labels_kind!r}, ", 1)

