"""Visual Genome box layouts: sg2im preprocessing and the loader.

Raw files under ``<root>/vg`` (``bash data_scripts/download_vg.sh``)::

    image_data.json  objects.json  relationships.json  object_alias.txt  relationship_alias.txt
    vg_splits.json (sg2im's train/val/test image ids)   images/VG_100K*/<id>.jpg

:func:`preprocess_visual_genome` (``python data_scripts/preprocess_vg.py``) follows sg2im's
``scripts/preprocess_vg.py`` with its defaults: drop images whose shorter side is < 200 px;
object vocabulary = (alias-mapped) names with >= 2000 instances in the train split, most frequent
first (178 classes on VG 1.4); an object takes its first name in the vocabulary and is dropped
when its box is < 32 px wide or high; images keep 3-30 such objects; with relationships, images
also need 1-30 relationships between kept objects whose predicate has >= 500 train instances.
It writes ``<root>/vg/processed/``::

    vocab.json         {"object_idx_to_name": [...], "object_name_to_idx": {...}, "params": {...}, "stats": {...}}
    {train,val,test}.npz   image_ids (M,), image_paths (M,) relative to vg/images, image_sizes (M, 2) W, H,
                           offsets (M+1,), object_classes (T,), object_boxes (T, 4) pixel x, y, w, h

Class ids are sg2im's object indices minus one (sg2im reserves 0 for ``__image__``), so they
are contiguous ``0..K-1``. :class:`VisualGenome` then applies the layout-to-image filter of
docs/method.md §7 on top: objects must cover ``> min_object_size`` (0.02) of the image (box clipped to
the image), and images keep 3-30 of them. ``min_object_size=0`` gives sg2im's own split files.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .paths import data_root
from .transforms import BoxLayoutDataset, LayoutTransform, clipped_area_fraction, require_file, select_objects
from ..errors import UserError
from ..files import atomic_path, save_text

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FETCH_HINT = "fetch Visual Genome with: bash data_scripts/download_vg.sh"
PREPROCESS_HINT = "build it with: python data_scripts/preprocess_vg.py"
ARRAYS = ("image_ids", "image_paths", "image_sizes", "offsets", "object_classes", "object_boxes")
SG2IM_DEFAULTS = dict(min_image_size=200, min_object_instances=2000, min_object_size=32, min_objects=3,
                      max_objects=30, min_relationship_instances=500, min_relationships=1, max_relationships=30)


def vg_dir(root: str | os.PathLike | None = None) -> Path:
    """``<root>/vg``."""
    return data_root(root) / "vg"


def _load_json(path: Path, what: str) -> Any:
    require_file(path, FETCH_HINT)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); expected {what}") from err


def _image_id(entry: dict[str, Any], path: Path) -> int:
    """VG files name the id ``image_id`` (1.2+) or ``id`` (1.0)."""
    if "image_id" in entry:
        return int(entry["image_id"])
    if "id" in entry:
        return int(entry["id"])
    raise UserError(f"{path}: entry without image_id: {str(entry)[:120]}")


def load_aliases(path: Path) -> dict[str, str]:
    """sg2im alias file: each line ``canonical,alias1,alias2`` -> ``{name: canonical}``."""
    aliases: dict[str, str] = {}
    with open(require_file(path, FETCH_HINT), encoding="utf-8") as f:
        for line in f:
            names = [s.strip() for s in line.split(",")]
            for name in names:
                aliases[name] = names[0]
    return aliases


def _list_of_images(data: Any, path: Path, key: str) -> list[dict[str, Any]]:
    if not isinstance(data, list) or (data and not (isinstance(data[0], dict) and key in data[0])):
        raise UserError(f"{path} is not a Visual Genome {key} file: expected a list of {{'image_id', '{key}': [...]}}")
    return data


def preprocess_visual_genome(vg: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
                             splits_json: str | os.PathLike | None = None, use_relationships: bool = True,
                             overwrite: bool = False, **params: int) -> dict[str, Any]:
    """Build ``vocab.json`` and ``{train,val,test}.npz`` from raw VG files (sg2im rules, see module doc).

    ``vg`` defaults to ``<data root>/vg``, ``out_dir`` to ``<vg>/processed``, ``splits_json`` to
    ``<vg>/vg_splits.json``. ``params`` override :data:`SG2IM_DEFAULTS`. Idempotent: when the
    outputs exist with the same parameters nothing is recomputed (``overwrite=True`` forces it).
    Returns the statistics written to ``vocab.json``.
    """
    unknown = set(params) - set(SG2IM_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown parameter(s) {sorted(unknown)}; choose from: {', '.join(SG2IM_DEFAULTS)}")
    p = {**SG2IM_DEFAULTS, **params, "use_relationships": bool(use_relationships)}
    vg = Path(vg).expanduser() if vg is not None else vg_dir()
    out = Path(out_dir).expanduser() if out_dir is not None else vg / "processed"
    splits_path = Path(splits_json).expanduser() if splits_json is not None else vg / "vg_splits.json"
    vocab_path = out / "vocab.json"
    if not overwrite and vocab_path.exists() and all((out / f"{s}.npz").exists() for s in SPLITS):
        done = json.loads(vocab_path.read_text())
        if done.get("params") == p:
            log.info("%s is up to date (same parameters); nothing to do", out)
            return done["stats"]
        log.info("%s was built with other parameters; rebuilding", out)

    images = _load_json(vg / "image_data.json", "Visual Genome image_data.json")
    if not isinstance(images, list):
        raise UserError(f"{vg / 'image_data.json'} is not a Visual Genome image list")
    image_by_id = {_image_id(im, vg / "image_data.json"): im for im in images}
    splits = _load_json(splits_path, "sg2im vg_splits.json {train, val, test: [image ids]}")
    if not isinstance(splits, dict) or not all(s in splits for s in SPLITS):
        raise UserError(f"{splits_path} is not an sg2im split file: expected keys {', '.join(SPLITS)}")

    # 1. images whose shorter side is < min_image_size are removed from every split
    stats: dict[str, Any] = {"removed_small_images": {}}
    for name in SPLITS:
        missing = [i for i in splits[name] if i not in image_by_id]
        if missing:
            raise UserError(f"{splits_path}: split {name!r} lists image id {missing[0]} absent from {vg / 'image_data.json'}")
        kept = [i for i in splits[name] if min(image_by_id[i]["width"], image_by_id[i]["height"]) >= p["min_image_size"]]
        stats["removed_small_images"][name] = len(splits[name]) - len(kept)
        splits[name] = kept

    obj_aliases = load_aliases(vg / "object_alias.txt")
    objects_path = vg / "objects.json"
    objects = _list_of_images(_load_json(objects_path, "Visual Genome objects.json"), objects_path, "objects")
    objects_by_image = {_image_id(e, objects_path): e["objects"] for e in objects}
    del objects

    # 2. object vocabulary from the train split, most frequent first (Counter order breaks ties)
    counter: Counter[str] = Counter()
    train_ids = set(splits["train"])
    try:
        for image_id, objs in objects_by_image.items():
            if image_id in train_ids:
                for obj in objs:
                    counter.update({obj_aliases.get(n, n) for n in obj["names"]})
    except (KeyError, TypeError) as err:
        raise UserError(f"{objects_path}: malformed object ({type(err).__name__}: {err}); each needs object_id, x, y, w, h, names") from err
    names = [n for n, c in counter.most_common() if c >= p["min_object_instances"]]
    if not names:
        raise UserError(f"no object name has >= {p['min_object_instances']} instances in the train split of {objects_path}")
    name_to_idx = {n: i for i, n in enumerate(names)}

    # 3. objects: first name in the vocabulary, box at least min_object_size px wide and high
    all_ids = set().union(*(set(splits[s]) for s in SPLITS))
    kept_objects: dict[int, tuple[int, list[float]]] = {}
    too_small = 0
    try:
        for image_id, objs in objects_by_image.items():
            if image_id not in all_ids:
                continue
            for obj in objs:
                cls = next((name_to_idx[a] for a in (obj_aliases.get(n, n) for n in obj["names"]) if a in name_to_idx), None)
                small = obj["w"] < p["min_object_size"] or obj["h"] < p["min_object_size"]
                too_small += small
                if cls is not None and not small:
                    kept_objects[obj["object_id"]] = (cls, [obj["x"], obj["y"], obj["w"], obj["h"]])
    except (KeyError, TypeError) as err:
        raise UserError(f"{objects_path}: malformed object ({type(err).__name__}: {err}); each needs object_id, x, y, w, h, names") from err
    stats["objects_too_small"] = too_small

    # 4. relationships (sg2im quirk kept for identical splits: only train predicates are normalised)
    rels_by_image: dict[int, list[dict[str, Any]]] = {}
    predicates: list[str] = []
    if use_relationships:
        rel_path = vg / "relationships.json"
        rels = _list_of_images(_load_json(rel_path, "Visual Genome relationships.json"), rel_path, "relationships")
        rel_aliases = load_aliases(vg / "relationship_alias.txt")
        rels_by_image = {_image_id(e, rel_path): e["relationships"] for e in rels}
        del rels
        pred_count: dict[str, int] = defaultdict(int)
        for image_id, image_rels in rels_by_image.items():  # file order, as sg2im
            if image_id not in train_ids:
                continue
            for rel in image_rels:
                if rel["subject"]["object_id"] in kept_objects and rel["object"]["object_id"] in kept_objects:
                    pred = rel["predicate"].lower().strip()
                    rel["predicate"] = rel_aliases.get(pred, pred)
                    pred_count[rel["predicate"]] += 1
        predicates = [q for q, c in pred_count.items() if c >= p["min_relationship_instances"]]
    pred_set = set(predicates)

    # 5. per split: objects per image and relationships per image in range
    out.mkdir(parents=True, exist_ok=True)
    stats["images"] = {}
    stats["skipped"] = {}
    for name in SPLITS:
        skip: dict[str, int] = defaultdict(int)
        ids, paths, sizes, counts, classes, boxes = [], [], [], [], [], []
        for image_id in splits[name]:
            objs = [o["object_id"] for o in objects_by_image.get(image_id, ()) if o["object_id"] in kept_objects]
            if len(objs) < p["min_objects"]:
                skip["too_few_objects"] += 1
                continue
            if len(objs) > p["max_objects"]:
                skip["too_many_objects"] += 1
                continue
            if use_relationships:
                present = set(objs)
                n_rel = sum(1 for r in rels_by_image.get(image_id, ()) if r["predicate"] in pred_set
                            and r["subject"]["object_id"] in present and r["object"]["object_id"] in present)
                if n_rel < p["min_relationships"]:
                    skip["too_few_relationships"] += 1
                    continue
                if n_rel > p["max_relationships"]:
                    skip["too_many_relationships"] += 1
                    continue
            im = image_by_id[image_id]
            ids.append(image_id)
            paths.append(_image_path(im))
            sizes.append((im["width"], im["height"]))
            counts.append(len(objs))
            for oid in objs:
                cls, box = kept_objects[oid]
                classes.append(cls)
                boxes.append(box)
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(np.asarray(counts, dtype=np.int64), out=offsets[1:])
        with atomic_path(out / f"{name}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, image_ids=np.asarray(ids, dtype=np.int64), image_paths=np.asarray(paths, dtype=str),
                     image_sizes=np.asarray(sizes, dtype=np.int64).reshape(-1, 2), offsets=offsets,
                     object_classes=np.asarray(classes, dtype=np.int64),
                     object_boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        stats["images"][name] = len(ids)
        stats["skipped"][name] = dict(skip)
        log.info("VG %s: %d images (%s)", name, len(ids), dict(skip))
    vocab = {"object_idx_to_name": names, "object_name_to_idx": name_to_idx, "pred_idx_to_name": predicates,
             "params": p, "stats": stats}
    save_text(json.dumps(vocab), vocab_path)  # written last: its presence marks a complete run
    return stats


def _image_path(image: dict[str, Any]) -> str:
    """``.../VG_100K_2/12.jpg`` -> ``VG_100K_2/12.jpg`` (relative to ``vg/images``), as sg2im."""
    url = image.get("url")
    if url:
        base, filename = os.path.split(url)
        return f"{os.path.basename(base)}/{filename}"
    return f"VG_100K/{_image_id(image, Path('image_data.json'))}.jpg"


def load_vocab(path: str | os.PathLike) -> list[str]:
    """Class names (index = class id) from a preprocessed ``vocab.json``."""
    path = Path(path)
    require_file(path, PREPROCESS_HINT)
    try:
        names = json.loads(path.read_text())["object_idx_to_name"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path} is not a vocab written by preprocess_vg.py ({type(err).__name__}: {err})") from err
    return list(names)


class VisualGenome(BoxLayoutDataset):
    """Visual Genome layouts from the preprocessed files (sg2im split by image id).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: data root; files in ``<root>/vg/processed`` (or ``processed_dir``) and images in
            ``<root>/vg/images`` (or ``image_dir``).
        image_size, crop, flip, transform, on_bad_image: as :class:`~layoutdiffuse.data.coco_stuff.CocoStuff`.
        min_object_size: area fraction a (clipped) box must exceed (0.02; 0 keeps all).
        min_objects, max_objects: per-image count range after that filter (3, 30).

    Sample: ``{"image": (3, S, S) in [-1, 1], "layout": (N, 5)}``; ``classes`` holds the
    vocabulary (178 names on VG 1.4), ``image_ids (M,)`` the VG image ids.
    """

    def __init__(self, split: str = "train", root: str | os.PathLike | None = None, image_size: int = 128,
                 crop: str | None = None, flip: float = 0.0, min_object_size: float = 0.02, min_objects: int = 3,
                 max_objects: int | None = 30, transform: LayoutTransform | None = None, on_bad_image: str = "skip",
                 processed_dir: str | os.PathLike | None = None, image_dir: str | os.PathLike | None = None):
        super().__init__(on_bad_image)
        if split not in SPLITS:
            raise UserError(f"unknown Visual Genome split {split!r}; choose one of: {', '.join(SPLITS)}")
        processed = Path(processed_dir).expanduser() if processed_dir is not None else vg_dir(root) / "processed"
        self.split = split
        self.classes = load_vocab(processed / "vocab.json")
        self.transform = transform or LayoutTransform(image_size, crop=crop, flip=flip, min_object_size=min_object_size)
        self.image_dir = require_file(Path(image_dir).expanduser() if image_dir is not None else vg_dir(root) / "images", FETCH_HINT)
        path = require_file(processed / f"{split}.npz", PREPROCESS_HINT)
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in ARRAYS}
        except (KeyError, ValueError, OSError) as err:
            raise UserError(f"{path} is not a split file written by preprocess_vg.py ({err}); {PREPROCESS_HINT}") from err
        M, T = len(data["image_ids"]), len(data["object_classes"])
        if M == 0:
            raise UserError(f"{path}: the {split} split is empty; {PREPROCESS_HINT} (check its thresholds)")
        if data["offsets"].shape != (M + 1,) or data["offsets"][-1] != T or data["object_boxes"].shape != (T, 4):
            raise UserError(f"{path}: inconsistent arrays (images {M}, offsets {data['offsets'].shape}, objects {T}, boxes {data['object_boxes'].shape})")
        if T and (data["object_classes"].min() < 0 or data["object_classes"].max() >= len(self.classes)):
            raise UserError(f"{path}: class ids outside [0, {len(self.classes)}) of {processed / 'vocab.json'}")

        obj_image = np.repeat(np.arange(M), np.diff(data["offsets"]))
        keep = clipped_area_fraction(data["object_boxes"], data["image_sizes"][obj_image]) > min_object_size
        images, offsets, objects = select_objects(obj_image, keep, M, min_objects, max_objects)
        if len(images) == 0:
            raise UserError(f"Visual Genome {split}: no image of {path} passes min_object_size={min_object_size}, "
                             f"{min_objects} <= objects <= {max_objects}")
        self.image_ids = data["image_ids"][images]
        self.files = data["image_paths"][images]
        self.sizes = data["image_sizes"][images]
        self.offsets = offsets
        self.boxes = data["object_boxes"][objects].astype(np.float32)
        self.labels = data["object_classes"][objects].astype(np.int64)
        log.info("Visual Genome %s: %d of %d images kept, %d objects", split, len(images), M, len(objects))

