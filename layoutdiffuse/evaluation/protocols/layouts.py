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
    """``layouts (L, N, 5)`` (padding rows -1), ``ids`` (each layout's image id in its dataset), the
    hashes found (``files``: path -> sha256, ``layouts_sha256``) and ``dataset``, the object that
    gives the real images (:func:`real_images`)."""

    layouts: torch.Tensor
    ids: list[int]
    files: dict[str, str]
    layouts_sha256: str
    dataset: Any


def layouts_sha256(layouts: torch.Tensor) -> str:
    """sha256 of the canonical JSON of a layout list ``(L, N, 5)``: per layout its real rows
    ``[x, y, w, h, class]`` (float32 values written as Python floats), padding left out."""
    rows = [[[float(v) for v in row] for row, ok in zip(layout, keep) if ok] for layout, keep in zip(layouts.float(), validity(layouts))]
    return hashlib.sha256(canonical_json(rows).encode()).hexdigest()


def _dataset(protocol: Protocol, root: str | None) -> Any:
    from ...data.registry import DATASETS

    args = dict(protocol.dataset_args)
    if protocol.dataset == "layout_mnist":
        length = 2 * (protocol.layouts or 0)  # the layouts' canvases, then the FID reference canvases
        return DATASETS.get("layout_mnist")(split=protocol.split, root=root, image_size=protocol.resolution, length=length, **args)
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
    count = protocol.layouts if protocol.dataset == "layout_mnist" else len(ds)
    if check and protocol.layouts is not None and count != protocol.layouts:
        raise UserError(f"protocol {protocol.name} expects {protocol.layouts} layouts, the files under {base} give {count}")
    if protocol.dataset == "layout_mnist":
        layouts = pad_layouts([ds[i]["layout"] for i in range(count)])
        ids = list(range(count))
    else:
        layouts = pad_layouts([ds[i]["layout"] for i in range(count)])
        ids = [int(i) for i in ds.image_ids[:count]]
    digest = layouts_sha256(layouts)
    if check and protocol.layouts_sha256 is not None and digest != protocol.layouts_sha256:
        raise UserError(f"protocol {protocol.name}: the derived layouts hash to {digest[:16]}..., the protocol pins "
                        f"{protocol.layouts_sha256[:16]}...; the layouts changed (different files, filter or code), so the run is refused")
    return ProtocolData(layouts=layouts, ids=ids, files=found, layouts_sha256=digest, dataset=ds)


def real_images(protocol: Protocol, data: ProtocolData, which: str, limit: int | None = None) -> torch.Tensor:
    """Real images ``(M, C, S, S)`` in [-1, 1]: ``which = "layouts"`` the layouts' own images (detection and
    layout-accuracy ceilings), ``"reference"`` the FID reference set (Layout-MNIST: the canvases after the
    layouts' own; datasets: the layouts' own images)."""
    count = len(data.layouts) if limit is None else min(limit, len(data.layouts))
    start = len(data.layouts) if which == "reference" and protocol.dataset == "layout_mnist" else 0
    if which not in ("layouts", "reference"):
        raise UserError(f"which must be 'layouts' or 'reference', got {which!r}")
    return torch.stack([data.dataset[start + i]["image"] for i in range(count)])
