"""A protocol's layouts and real images, derived from the dataset files it pins, checked against its hashes."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

from ...data.paths import data_root
from ...errors import UserError
from ...layout import pad_layouts, validity
from .spec import Protocol, canonical_json, file_sha256

log = logging.getLogger(__name__)


@dataclass
class ProtocolData:
    """``layouts (L, N, 5)`` (padding rows -1; the classes are what the scores read: colour
    Layout-MNIST's are the digits), ``ids`` (each layout's image id in its dataset), the hashes found
    (``files``: path -> sha256, ``layouts_sha256``) and ``dataset``, the object that gives the real
    images (:func:`real_images`).

    Layouts with a phrase per box (colour Layout-MNIST) also have ``phrases``, the protocol's distinct
    phrases (sorted), ``phrase_index (L, N)`` (each row's phrase in ``phrases``, -1 on padding) and
    ``colours (L, N)`` (each row's asked colour id, -1 on padding); ``None`` for class layouts."""

    layouts: torch.Tensor
    ids: list[int]
    files: dict[str, str]
    layouts_sha256: str
    dataset: Any
    phrases: list[str] | None = None
    phrase_index: torch.Tensor | None = None
    colours: torch.Tensor | None = None

    def sampling_layouts(self) -> torch.Tensor:
        """The layouts as the model reads them: for phrase layouts each row's class is its index in
        ``phrases`` (:func:`layoutdiffuse.sampling.sample_batched`'s ``phrases=``)."""
        if self.phrase_index is None:
            return self.layouts
        out = self.layouts.clone()
        out[..., 4] = torch.where(validity(out), self.phrase_index.to(out.dtype), out[..., 4])
        return out


#: datasets whose protocol layouts are drawn by a seeded generator (a fixed count of canvases, no files to filter)
GENERATED = ("layout_mnist", "layout_mnist_color")


def layouts_sha256(layouts: torch.Tensor, box_text: list[list[str]] | None = None, colours: torch.Tensor | None = None) -> str:
    """sha256 of the canonical JSON of a layout list ``(L, N, 5)``: per layout its real rows
    ``[x, y, w, h, class]`` (float32 values written as Python floats), padding left out. With
    ``box_text`` (per layout the phrases of its real rows) and ``colours (L, N)`` each row is
    ``[x, y, w, h, class, colour, phrase]``."""
    valid = validity(layouts)
    rows = [[[float(v) for v in row] for row, ok in zip(layout, keep) if ok] for layout, keep in zip(layouts.float(), valid)]
    if box_text is not None:
        if colours is None or [len(r) for r in rows] != [len(t) for t in box_text]:
            raise UserError("box_text needs colours (L, N) and one phrase per real layout row")
        asked = [c[keep].tolist() for c, keep in zip(colours, valid)]
        rows = [[r + [c, t] for r, c, t in zip(layout, cs, texts)] for layout, cs, texts in zip(rows, asked, box_text)]
    return hashlib.sha256(canonical_json(rows).encode()).hexdigest()


def _dataset(protocol: Protocol, root: str | None) -> Any:
    from ...data.registry import DATASETS

    args = dict(protocol.dataset_args)
    if protocol.dataset in GENERATED:
        length = 2 * (protocol.layouts or 0)  # the layouts' canvases, then the FID reference canvases
        return DATASETS.get(protocol.dataset)(split=protocol.split, root=root, image_size=protocol.resolution, length=length, **args)
    return DATASETS.get(protocol.dataset)(split=protocol.split, root=root, image_size=protocol.resolution, **args)


def load_protocol_data(protocol: Protocol, root: str | None = None, check: bool = True) -> ProtocolData:
    """Derive ``protocol``'s layouts from its files under ``root`` (default ``$LAYOUTDIFFUSE_DATA``).

    With ``check`` a pinned file hash, layout count or layout-list hash that differs from what is
    found raises :class:`UserError` (the protocol's layouts changed); hashes pinned as ``None``
    are computed and returned, not checked."""
    base = data_root(root)
    found = {}
    for rel, expected in protocol.source_files.items():
        path = base / rel
        if not path.is_file():
            raise UserError(f"protocol {protocol.name} needs {path} (missing); see docs/evaluation.md for how to fetch it")
        found[rel] = file_sha256(path)
        if check and expected is not None and found[rel] != expected:
            raise UserError(f"protocol {protocol.name}: {path} has sha256 {found[rel][:16]}..., the protocol pins {expected[:16]}...; "
                            "the layouts would not be the protocol's")
    ds = _dataset(protocol, root)
    count = protocol.layouts if protocol.dataset in GENERATED else len(ds)
    if check and protocol.layouts is not None and count != protocol.layouts:
        raise UserError(f"protocol {protocol.name} expects {protocol.layouts} layouts, the files under {base} give {count}")
    items = [ds[i] for i in range(count)]
    layouts = pad_layouts([item["layout"] for item in items])
    ids = list(range(count)) if protocol.dataset in GENERATED else [int(i) for i in ds.image_ids[:count]]
    text = phrase_rows(items, layouts.shape[1]) if items and "box_text" in items[0] else {}
    digest = layouts_sha256(layouts, [item["box_text"] for item in items], text["colours"]) if text else layouts_sha256(layouts)
    if check and protocol.layouts_sha256 is not None and digest != protocol.layouts_sha256:
        raise UserError(f"protocol {protocol.name}: the derived layouts hash to {digest[:16]}..., the protocol pins "
                        f"{protocol.layouts_sha256[:16]}...; the layouts changed (different files, filter or code), so the run is refused")
    return ProtocolData(layouts=layouts, ids=ids, files=found, layouts_sha256=digest, dataset=ds, **text)


def phrase_rows(items: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    """Colour Layout-MNIST items -> ``{"phrases", "phrase_index" (L, rows), "colours" (L, rows)}`` (see :class:`ProtocolData`)."""
    phrases = sorted({t for item in items for t in item["box_text"]})
    index = {t: i for i, t in enumerate(phrases)}
    phrase_index = torch.full((len(items), rows), -1, dtype=torch.long)
    colours = torch.full((len(items), rows), -1, dtype=torch.long)
    for k, item in enumerate(items):
        n = len(item["box_text"])
        phrase_index[k, :n] = torch.tensor([index[t] for t in item["box_text"]], dtype=torch.long)
        colours[k, :n] = item["colours"][:n]
    return {"phrases": phrases, "phrase_index": phrase_index, "colours": colours}


def real_images(protocol: Protocol, data: ProtocolData, which: str, limit: int | None = None) -> torch.Tensor:
    """Real images ``(M, C, S, S)`` in [-1, 1]: ``which = "layouts"`` the layouts' own images (detection and
    layout-accuracy ceilings), ``"reference"`` the FID reference set (Layout-MNIST: the canvases after the
    layouts' own; datasets: the layouts' own images)."""
    count = len(data.layouts) if limit is None else min(limit, len(data.layouts))
    start = len(data.layouts) if which == "reference" and protocol.dataset in GENERATED else 0
    if which not in ("layouts", "reference"):
        raise UserError(f"which must be 'layouts' or 'reference', got {which!r}")
    return torch.stack([data.dataset[start + i]["image"] for i in range(count)])
