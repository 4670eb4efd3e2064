"""A protocol: everything that fixes an evaluation's numbers, as plain data with a hash.

A :class:`Protocol` pins the layouts (how they are derived from which files, and the sha256 of
those files and of the derived layout list), the samples drawn per layout, the resolution, the
seeds and how they are assigned, the image format, the FID implementation and its mode, the
detector, the metrics and their bootstrap intervals. :meth:`Protocol.sha256` hashes its canonical
JSON, so a report or a sample folder names exactly what it was made under; a hash left ``None``
is one that could not be computed where the protocol was written (the data could not be
downloaded) and is recorded, not checked, when the protocol runs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ...errors import UserError


@dataclass(frozen=True)
class Protocol:
    """One named evaluation protocol (see the module docstring and ``docs/evaluation.md``).

    ``dataset`` / ``split`` / ``dataset_args``: the layout source (a registered dataset and its
    filter). ``source_files``: ``{path under the data root: sha256 or None}``. ``layouts``: how many
    layouts the filter must give (``None``: not fixed). ``layouts_sha256``: sha256 of the derived
    layout list (:func:`.layouts.layouts_sha256`). Image ``k`` of a run shows layout
    ``k // samples_per_layout`` and is drawn in the chunk of ``chunk`` images that holds it, from a
    generator seeded ``seed + first image of the chunk``. ``fid``: ``implementation`` (``digit-fid``,
    ``clean-fid``, ``torch-fidelity``), ``mode``, ``reference`` (what the real statistics are of).
    ``detector``: the detection score's detector (``None``: no detection score). ``metrics``: the
    measures reported, each with a bootstrap interval of ``bootstrap`` (``resamples``, ``level``,
    ``seed``) over layouts.
    """

    name: str
    description: str
    source: str
    dataset: str
    split: str
    resolution: int
    samples_per_layout: int
    layouts: int | None
    dataset_args: dict[str, Any] = field(default_factory=dict)
    source_files: dict[str, str | None] = field(default_factory=dict)
    layouts_sha256: str | None = None
    seed: int = 0
    chunk: int = 16
    image_format: str = "png"
    fid: dict[str, Any] = field(default_factory=dict)
    detector: str | None = None
    metrics: tuple[str, ...] = ("fid", "detection", "layout_accuracy", "diversity")
    bootstrap: dict[str, Any] = field(default_factory=lambda: {"resamples": 200, "level": 0.95, "seed": 0})
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = list(self.metrics)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Protocol":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"protocol has unknown field(s) {unknown}; allowed: {', '.join(sorted(known))}")
        return cls(**{**data, "metrics": tuple(data.get("metrics", cls.metrics))})

    def sha256(self) -> str:
        """sha256 of the canonical JSON (sorted keys, no spaces) of :meth:`to_dict`."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()

    def images(self, limit: int | None = None) -> int:
        """Images of a run over the first ``limit`` layouts (all when ``None``)."""
        if self.layouts is None and limit is None:
            raise UserError(f"protocol {self.name} does not fix its layout count; pass --limit")
        n = self.layouts if limit is None else min(limit, self.layouts or limit)
        return n * self.samples_per_layout

    def replace(self, **changes: Any) -> "Protocol":
        return replace(self, **changes)


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace: the form every hash in this package is taken of."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def file_sha256(path: Any, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
