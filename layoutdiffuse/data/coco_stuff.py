"""COCO-stuff 2017 box layouts, filtered by the LostGAN / sg2im protocol.

Files under ``<root>/coco`` (``$LAYOUTDIFFUSE_DATA``, default ``~/data``; fetch them with
``bash data_scripts/download_coco.sh``)::

    annotations/instances_{train,val}2017.json   things (COCO ids 1-90, 80 used)
    annotations/stuff_{train,val}2017.json       stuff (ids 92-182) + "other" (183)
    annotations/captions_{train,val}2017.json    optional, for caption=...
    {train,val}2017/<file_name>.jpg

The filter (all defaults are the protocol; every knob is an argument):

* things and stuff boxes together; stuff "other" (id 183) is always dropped;
* objects whose box covers ``<= min_object_size`` (0.02) of the image are dropped (sg2im's
  strict ``area > 0.02``);
* crowd annotations (``iscrowd=1``, things only): ``crowd="drop"`` (default) removes them before
  counting, as the LostGAN filter does (the filter behind the 3,097-image val split reported by
  LostGAN-v2 and LayoutDiffusion); ``crowd="keep"`` counts them as ordinary objects, as sg2im;
* only images that have stuff annotations (``stuff_only``, sg2im's default);
* images with ``min_objects <= N <= max_objects`` (3-8) remaining objects.

Class ids: the 80 thing + 91 stuff categories in increasing COCO id order map to contiguous
``0..170`` (:data:`CLASSES`, :data:`COCO_ID_TO_CLASS`, :data:`CLASS_TO_COCO_ID`). Images are in
the annotation file's order; objects are things then stuff, in file order.
"""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .paths import data_root
from .transforms import BoxLayoutDataset, LayoutTransform, clipped_area_fraction, require_file, select_objects
from ..errors import UserError

log = logging.getLogger(__name__)

THINGS = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
STUFF = tuple(enumerate((
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood",
    "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house",
    "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow",
    "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel",
    "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
), start=92))
OTHER_ID = 183  # stuff "other": always dropped

CLASS_TO_COCO_ID: tuple[int, ...] = tuple(cid for cid, _ in THINGS + STUFF)
CLASSES: tuple[str, ...] = tuple(name for _, name in THINGS + STUFF)
COCO_ID_TO_CLASS: dict[int, int] = {cid: i for i, cid in enumerate(CLASS_TO_COCO_ID)}
NUM_CLASSES = len(CLASSES)  # 171
SPLITS = ("train", "val")
CROWD = ("drop", "keep")
CAPTIONS = (None, "first", "random")
FETCH_HINT = "fetch COCO 2017 with: bash data_scripts/download_coco.sh"
COCO_KEYS = ("images", "annotations", "categories")


def coco_files(split: str = "val", root: str | os.PathLike | None = None) -> dict[str, Path]:
    """Where the loader looks: ``instances``, ``stuff``, ``captions`` JSON and the ``images`` folder."""
    if split not in SPLITS:
        raise UserError(f"unknown COCO split {split!r}; choose one of: {', '.join(SPLITS)}")
    coco = data_root(root) / "coco"
    ann = coco / "annotations"
    return {"instances": ann / f"instances_{split}2017.json", "stuff": ann / f"stuff_{split}2017.json",
            "captions": ann / f"captions_{split}2017.json", "images": coco / f"{split}2017"}


def load_coco_json(path: str | os.PathLike, keys: Sequence[str] = COCO_KEYS) -> dict[str, Any]:
    """Read a COCO-format JSON; ``ValueError`` naming the file when it is not JSON or lacks ``keys``."""
    path = Path(path)
    require_file(path, FETCH_HINT)
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err}); expected a COCO annotation file") from err
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a COCO annotation file: top level is a {type(data).__name__}, expected an object with keys {', '.join(keys)}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise UserError(f"{path} is not a COCO annotation file: missing key(s) {', '.join(missing)} (has: {', '.join(sorted(data)[:8])})")
    return data


def _annotation_arrays(data: dict[str, Any], path: Path, image_index: dict[int, int]) -> tuple[np.ndarray, ...]:
    """-> ``image (T,)`` index into the image table, ``bbox (T, 4)``, ``category (T,)``, ``crowd (T,)`` bool."""
    anns = data["annotations"]
    try:
        image_ids = [a["image_id"] for a in anns]
        bbox = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        category = np.asarray([a["category_id"] for a in anns], dtype=np.int64)
        crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: malformed annotation ({type(err).__name__}: {err}); each needs image_id, bbox [x, y, w, h], category_id") from err
    try:
        image = np.asarray([image_index[i] for i in image_ids], dtype=np.int64)
    except KeyError as err:
        raise UserError(f"{path}: annotation refers to image id {err.args[0]} that is not in the image table") from None
    known = np.isin(category, np.asarray(CLASS_TO_COCO_ID + (OTHER_ID,)))
    if not known.all():
        bad = sorted(set(category[~known].tolist()))[:5]
        raise UserError(f"{path}: category id(s) {bad} are not COCO-stuff 2017 categories (things 1-90, stuff 92-182, other 183)")
    if len(bbox) and ((bbox[:, 2:] < 0).any() or not np.isfinite(bbox).all()):
        raise UserError(f"{path}: some bbox has a negative or non-finite size")
    return image, bbox, category, crowd


def _check_category_names(data: dict[str, Any], path: Path) -> None:
    names = dict(zip(CLASS_TO_COCO_ID, CLASSES))
    for cat in data["categories"]:
        expected = names.get(cat.get("id"))
        if expected is not None and cat.get("name") != expected:
            log.warning("%s: category %s is named %r, this loader calls it %r", path, cat.get("id"), cat.get("name"), expected)


class CocoStuff(BoxLayoutDataset):
    """COCO-stuff 2017 layouts (LostGAN / sg2im filter, see the module docstring).

    Args:
        split: ``"train"`` or ``"val"``.
        root: data root (default ``$LAYOUTDIFFUSE_DATA`` or ``~/data``); files in :func:`coco_files`.
        image_size: output side ``S`` (128 or 256 in the literature).
        crop, flip: see :class:`LayoutTransform` (default: whole image stretched to ``S x S``,
            no flip: the protocol). Boxes cut by a crop follow the same ``min_object_size`` rule.
        min_object_size: area fraction a box must exceed (0.02).
        min_objects, max_objects: per-image object count range after filtering (3, 8; pass a
            larger ``max_objects`` or ``None`` for a bigger training set).
        crowd: ``"drop"`` (LostGAN) or ``"keep"`` (sg2im) crowd annotations.
        stuff_only: keep only images present in the stuff annotations (sg2im default).
        caption: ``None`` (no caption), ``"first"`` or ``"random"`` of the image's COCO captions.
        transform: replaces the default :class:`LayoutTransform`.
        on_bad_image: ``"skip"`` or ``"raise"`` (see :mod:`layoutdiffuse.data.transforms`).
        files: overrides of :func:`coco_files` entries (``instances``, ``stuff``, ``captions``, ``images``).

    Sample: ``{"image": (3, S, S) in [-1, 1], "layout": (N, 5) x, y, w, h, class in [0, 171)}``
    (+ ``"caption": str``). ``image_ids (M,)`` are the COCO image ids.
    """

    classes = CLASSES

    def __init__(self, split: str = "val", root: str | os.PathLike | None = None, image_size: int = 128,
                 crop: str | None = None, flip: float = 0.0, min_object_size: float = 0.02,
                 min_objects: int = 3, max_objects: int | None = 8, crowd: str = "drop", stuff_only: bool = True,
                 caption: str | None = None, transform: LayoutTransform | None = None,
                 on_bad_image: str = "skip", files: dict[str, str | os.PathLike] | None = None):
        super().__init__(on_bad_image)
        if crowd not in CROWD:
            raise UserError(f"unknown crowd {crowd!r}; choose one of: {', '.join(CROWD)}")
        if caption not in CAPTIONS:
            raise UserError(f"unknown caption {caption!r}; choose one of: None, 'first', 'random'")
        paths = coco_files(split, root)
        paths.update({k: Path(v).expanduser() for k, v in (files or {}).items()})
        self.split, self.paths, self.caption_mode = split, paths, caption
        self.transform = transform or LayoutTransform(image_size, crop=crop, flip=flip, min_object_size=min_object_size)
        self.image_dir = require_file(paths["images"], FETCH_HINT)
        if not self.image_dir.is_dir():
            raise NotADirectoryError(f"{self.image_dir} is not a folder of images; {FETCH_HINT}")

        instances = load_coco_json(paths["instances"])
        try:
            table = [(int(im["id"]), str(im["file_name"]), int(im["width"]), int(im["height"])) for im in instances["images"]]
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{paths['instances']}: malformed image entry ({type(err).__name__}: {err}); each needs id, file_name, width, height") from err
        if not table:
            raise UserError(f"{paths['instances']} lists no images")
        ids = np.asarray([t[0] for t in table], dtype=np.int64)
        files_ = np.asarray([t[1] for t in table])
        sizes = np.asarray([(t[2], t[3]) for t in table], dtype=np.int64)
        if (sizes <= 0).any():
            raise UserError(f"{paths['instances']}: image {int(ids[(sizes <= 0).any(1)][0])} has a non-positive width/height")
        image_index = {int(i): k for k, i in enumerate(ids)}
        _check_category_names(instances, paths["instances"])
        parts = [_annotation_arrays(instances, paths["instances"], image_index)]
        del instances

        with_stuff = None
        stuff = load_coco_json(paths["stuff"])
        _check_category_names(stuff, paths["stuff"])
        parts.append(_annotation_arrays(stuff, paths["stuff"], image_index))
        del stuff
        if stuff_only:
            with_stuff = np.zeros(len(ids), dtype=bool)
            with_stuff[parts[1][0]] = True

        image, bbox, category, crowd_flag = (np.concatenate(a) for a in zip(*parts))
        keep = (category != OTHER_ID) & (clipped_area_fraction(bbox, sizes[image]) > min_object_size)
        if crowd == "drop":
            keep &= ~crowd_flag
        images, offsets, objects = select_objects(image, keep, len(ids), min_objects, max_objects, with_stuff)
        if len(images) == 0:
            raise UserError(f"COCO-stuff {split}: no image passes the filter (min_object_size={min_object_size}, "
                             f"{min_objects} <= objects <= {max_objects}, crowd={crowd!r}, stuff_only={stuff_only}) "
                             f"in {paths['instances']} + {paths['stuff']}")
        self.image_ids, self.files, self.sizes, self.offsets = ids[images], files_[images], sizes[images], offsets
        self.boxes = bbox[objects].astype(np.float32)
        self.labels = np.asarray([COCO_ID_TO_CLASS[c] for c in category[objects].tolist()], dtype=np.int64)
        self.num_crowd = int(crowd_flag[objects].sum())
        log.info("COCO-stuff %s: %d of %d images kept, %d objects", split, len(images), len(ids), len(objects))

        self.captions: list[list[str]] | None = None
        if caption is not None:
            self.captions = self._load_captions(paths["captions"])

    def _load_captions(self, path: Path) -> list[list[str]]:
        data = load_coco_json(path, keys=("images", "annotations"))
        by_image: dict[int, list[str]] = {int(i): [] for i in self.image_ids}
        try:
            for ann in data["annotations"]:
                if ann["image_id"] in by_image:
                    by_image[ann["image_id"]].append(str(ann["caption"]).strip())
        except (KeyError, TypeError) as err:
            raise UserError(f"{path}: malformed caption annotation ({type(err).__name__}: {err}); each needs image_id and caption") from err
        missing = [i for i, c in by_image.items() if not c]
        if missing:
            log.warning("%s: %d image(s) have no caption (e.g. id %d); they get the empty caption", path, len(missing), missing[0])
        return [by_image[int(i)] for i in self.image_ids]

    def caption(self, index: int) -> str | None:
        if self.captions is None:
            return None
        options = self.captions[index]
        if not options:
            return ""
        return options[0] if self.caption_mode == "first" else random.choice(options)
