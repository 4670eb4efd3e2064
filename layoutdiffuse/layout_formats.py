"""Other projects' layout files: read and write GLIGEN, InstanceDiffusion and COCO layouts.

This project's layout is a list of objects ``{"text": "a red seven", "box": [x, y, w, h]}`` (or
``"label"`` instead of ``"text"``), boxes normalised to [0, 1] of the image (top-left corner and
size; :mod:`layoutdiffuse.layout_file`). The formats read and written here (docs/layout_formats.md):

``gligen``
    diffusers' ``StableDiffusionGLIGENPipeline`` arguments in a JSON object:
    ``{"prompt": str, "gligen_phrases": [str], "gligen_boxes": [[xmin, ymin, xmax, ymax]]}``,
    corners in [0, 1] of the image (y down).
``instancediffusion``
    InstanceDiffusion's input JSON (``demos/*.json`` of frank-xwang/InstanceDiffusion):
    ``{"caption": str, "width": W, "height": H, "annos": [{"bbox": [x, y, w, h] (pixels),
    "mask": [] | RLE, "category_name": str, "caption": str}]}``.
``coco``
    a COCO instances file (``images``, ``annotations`` with ``bbox [x, y, w, h]`` in pixels,
    ``categories`` with names); one image's annotations are one layout, category names its text.

Reading yields ``{"text", "box"}`` objects (a file of this project's own format is returned as
written); every box is checked (finite, positive size, inside the image) and named in the source's
own terms when refused. Nothing is dropped silently: an InstanceDiffusion anno without a ``bbox``
is refused, masks, points and keys a layout cannot hold are named in a warning. Importing this module
imports no torch (the command line's checks read :data:`FORMATS`); reading a file does, through
:mod:`layoutdiffuse.layout` (its box tolerance and :class:`~layoutdiffuse.layout.LayoutError`).
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from .errors import UserError, short
from .files import check_readable, read_json, save_text
from .schema import check_integer

log = logging.getLogger(__name__)

#: this project's layout objects, ``[{"text" | "label": ..., "box": [x, y, w, h]}]``
Objects = list[dict[str, Any]]

#: the formats :func:`write_layout` writes and :func:`read_layout` detects by content
FORMATS = ("layoutdiffuse", "gligen", "instancediffusion", "coco")
#: the formats whose boxes are in pixels: writing them needs the image's width and height
PIXEL_FORMATS = ("instancediffusion", "coco")
#: diffusers' StableDiffusionGLIGENPipeline reads at most this many boxes (it keeps the first 30, with a warning)
GLIGEN_MAX_OBJECTS = 30
#: the keys of an InstanceDiffusion anno that are not part of a box layout (read, named in a warning)
INSTANCE_EXTRAS = ("mask", "point", "scribble")


class ReadLayout(NamedTuple):
    """A layout read from a file: ``objects`` (``[{"text" | "label", "box"}]``), the file's global
    ``caption`` (``None`` where the format has none), its ``format`` and, for pixel formats, the
    image ``size`` ``(width, height)``."""

    objects: Objects
    caption: str | None
    format: str
    size: tuple[int, int] | None


def refuse(message: str) -> UserError:
    """A :class:`layoutdiffuse.layout.LayoutError` (imported here: it brings torch)."""
    from .layout import LayoutError

    return LayoutError(message)


# --------------------------------------------------------------------------- boxes and phrases

def corners_to_box(corners: Sequence[float]) -> list[float]:
    """``[xmin, ymin, xmax, ymax]`` -> ``[x, y, w, h]`` (same units)."""
    x0, y0, x1, y1 = corners
    return [x0, y0, x1 - x0, y1 - y0]


def box_to_corners(box: Sequence[float]) -> list[float]:
    """``[x, y, w, h]`` -> ``[xmin, ymin, xmax, ymax]`` (same units)."""
    x, y, w, h = box
    return [x, y, x + w, y + h]


def numbers(value: Any, count: int, where: str, meaning: str) -> list[float]:
    """``value`` as ``count`` finite floats (JSON numbers, not booleans), else one line naming ``where``."""
    ok = isinstance(value, list) and len(value) == count and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    try:
        floats = [float(v) for v in value] if ok else []
    except OverflowError:  # an integer beyond any float
        ok = False
    if not ok or not all(map(math.isfinite, floats)):
        raise refuse(f"{where} must be a list of {count} finite numbers {meaning}, got {short(value)}")
    return floats


def unit_box(box: list[float], where: str, clip: bool) -> list[float]:
    """Check a normalised ``[x, y, w, h]`` (read from ``where``, which names the source field and value)
    against the rules of :func:`layoutdiffuse.layout.validate_layout`; with ``clip`` a box leaving the
    image is cut to it (a warning names it) instead of refused."""
    from .layout import TOLERANCE

    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise refuse(f"{where}: the box has a zero or negative width or height; sizes must be > 0")
    inside = x >= -TOLERANCE and y >= -TOLERANCE and x + w <= 1 + TOLERANCE and y + h <= 1 + TOLERANCE
    if inside:
        return box
    if not clip:
        raise refuse(f"{where}: the box leaves the image (it spans x {x:.4g} to {x + w:.4g}, y {y:.4g} to {y + h:.4g} of the image's "
                     "[0, 1]); give boxes inside the image, or clip them to it (clip=True, --clip)")
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, 1.0), min(y + h, 1.0)
    if x1 <= x0 or y1 <= y0:
        raise refuse(f"{where}: the box lies wholly outside the image; clipping leaves nothing of it")
    log.warning("%s: the box leaves the image; clipped to [x, y, w, h] = %s", where, [round(v, 6) for v in (x0, y0, x1 - x0, y1 - y0)])
    return [x0, y0, x1 - x0, y1 - y0]


def phrase(value: Any, where: str) -> str:
    """``value`` as a box's phrase: a string with a non-space character."""
    if not isinstance(value, str) or not value.strip():
        raise refuse(f"{where} must be a non-empty phrase (a string), got {short(value)}")
    return value


def image_size(width: Any, height: Any, where: str, give: str = "width=, height=; --width, --height") -> tuple[int, int]:
    """``(width, height)`` as positive integers (pixels); ``give`` says where a missing size goes."""
    if width is None or height is None:
        raise UserError(f"{where} needs the image's width and height in pixels (its boxes are in pixels); give both ({give})")
    return check_integer(width, f"{where}: width", 1), check_integer(height, f"{where}: height", 1)


def pixel_box(value: Any, where: str, width: int, height: int, clip: bool) -> list[float]:
    """A pixel box ``[x, y, w, h]`` of a ``width`` x ``height`` image (read from ``where``) -> normalised, checked."""
    x, y, w, h = numbers(value, 4, where, "[x, y, w, h] in pixels")
    return unit_box([x / width, y / height, w / width, h / height], f"{where} {short(value)} (pixels of a {width}x{height} image)", clip)


def scaled(box: Sequence[float], width: int, height: int) -> list[float]:
    """A normalised ``[x, y, w, h]`` in pixels of a ``width`` x ``height`` image."""
    x, y, w, h = box
    return [x * width, y * height, w * width, h * height]


def global_caption(data: dict[str, Any], key: str, where: str) -> str | None:
    """The image's caption under ``key``: a string, ``None`` when absent or blank (the empty prompt)."""
    caption = data.get(key)
    if caption is not None and not isinstance(caption, str):
        raise refuse(f"{where}: '{key}' (the image's caption) must be a string, got {short(caption)}")
    return caption if caption and caption.strip() else None


def warn_unread(keys: Sequence[str], where: str) -> None:
    """Name, in a warning, keys that a box layout cannot hold (read but not kept)."""
    if keys:
        log.warning("%s: %s: not part of a box layout, not read", where, ", ".join(map(repr, keys)))


# --------------------------------------------------------------------------- this project's objects

def object_text(obj: dict[str, Any], where: str, class_names: Sequence[str] | None = None) -> str:
    """The phrase of one of this project's objects: its ``text``, or its ``label`` (a class name, or
    an integer id looked up in ``class_names``)."""
    if "text" in obj:
        return phrase(obj["text"], f"{where}: 'text'")
    label = obj["label"]
    if isinstance(label, int) and not isinstance(label, bool):
        if class_names is None or not 0 <= label < len(class_names):
            known = "" if class_names is None else f" (class ids 0 to {len(class_names) - 1})"
            raise refuse(f"{where}: label {label} is a class id{known}; other formats take phrases: give the class's name "
                         "as the label, or the class names (class_names=)")
        return class_names[label]
    return phrase(label, f"{where}: 'label'")


def check_objects(objects: Any, where: str, clip: bool = False) -> Objects:
    """This project's layout objects, checked: a list of ``{"text" | "label", "box"}`` objects with
    boxes ``[x, y, w, h]`` inside [0, 1]. Returns copies (boxes as floats, clipped with ``clip``)."""
    if not isinstance(objects, list):
        raise refuse(f"{where}: a layout is a list of objects like {{\"text\": \"a red seven\", \"box\": [x, y, w, h]}}, "
                     f"got {type(objects).__name__}")
    checked = []
    for i, obj in enumerate(objects):
        at = f"{where}: object {i}"
        if not isinstance(obj, dict) or "box" not in obj or len({"text", "label"} & set(obj)) != 1 or set(obj) - {"text", "label", "box"}:
            raise refuse(f"{at}: expected the keys 'box' and one of 'text' or 'label', got {short(obj)}")
        name = "text" if "text" in obj else "label"
        class_id = name == "label" and isinstance(obj["label"], int) and not isinstance(obj["label"], bool) and obj["label"] >= 0
        if not class_id:
            phrase(obj[name], f"{at}: '{name}' (a phrase{'' if name == 'text' else ', a class name or a class id >= 0'})")
        box = numbers(obj["box"], 4, f"{at}: 'box'", "[x, y, w, h] in [0, 1]")
        checked.append({name: obj[name], "box": unit_box(box, f"{at}: 'box' {short(obj['box'])}", clip)})
    return checked


# --------------------------------------------------------------------------- GLIGEN (diffusers)

def from_gligen(data: dict[str, Any], where: str, clip: bool = False) -> tuple[Objects, str | None]:
    """``{"prompt", "gligen_phrases", "gligen_boxes"}`` -> (objects, prompt)."""
    phrases, boxes = data.get("gligen_phrases"), data.get("gligen_boxes")
    for key, value in (("gligen_phrases", phrases), ("gligen_boxes", boxes)):
        if not isinstance(value, list):
            raise refuse(f"{where}: '{key}' must be a list (GLIGEN: gligen_phrases [str], gligen_boxes [[xmin, ymin, xmax, ymax]] in "
                         f"[0, 1]), got {short(value)}")
    if len(phrases) != len(boxes):
        raise refuse(f"{where}: 'gligen_phrases' has {len(phrases)} phrases and 'gligen_boxes' {len(boxes)} boxes; give one phrase per box")
    prompt = global_caption(data, "prompt", where)
    warn_unread(sorted(set(data) - {"prompt", "gligen_phrases", "gligen_boxes"}), where)
    objects = []
    for i, (text, corners) in enumerate(zip(phrases, boxes)):
        phrase(text, f"{where}: gligen_phrases[{i}]")
        at = f"{where}: gligen_boxes[{i}]"
        x0, y0, x1, y1 = numbers(corners, 4, at, "[xmin, ymin, xmax, ymax] in [0, 1]")
        if x1 <= x0 or y1 <= y0:
            raise refuse(f"{at} {short(corners)}: xmax must be > xmin and ymax > ymin (corners [xmin, ymin, xmax, ymax] in [0, 1])")
        objects.append({"text": text, "box": unit_box(corners_to_box([x0, y0, x1, y1]), f"{at} {short(corners)}", clip)})
    return objects, prompt


def to_gligen(objects: Objects, caption: str | None = None, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Checked objects -> diffusers' GLIGEN arguments (``prompt`` "" when no caption is given: the pipeline needs one)."""
    texts = [object_text(o, f"object {i}", class_names) for i, o in enumerate(objects)]
    if len(objects) > GLIGEN_MAX_OBJECTS:
        log.warning("%d objects: diffusers' GLIGEN pipeline reads the first %d and drops the rest (with its own warning)",
                    len(objects), GLIGEN_MAX_OBJECTS)
    return {"prompt": caption or "", "gligen_phrases": texts,
            "gligen_boxes": [box_to_corners(o["box"]) for o in objects]}


# --------------------------------------------------------------------------- InstanceDiffusion

def from_instancediffusion(data: dict[str, Any], where: str, clip: bool = False) -> tuple[Objects, str | None, tuple[int, int]]:
    """``{"caption", "width", "height", "annos"}`` -> (objects, caption, (width, height)). A box's text
    is its anno's ``caption``, else its ``category_name``."""
    width, height = image_size(data.get("width"), data.get("height"), where, "the keys 'width' and 'height' beside 'annos'")
    annos, caption = data.get("annos"), global_caption(data, "caption", where)
    if not isinstance(annos, list):
        raise refuse(f"{where}: 'annos' must be a list of {{\"bbox\": [x, y, w, h], \"caption\": ...}} objects, got {short(annos)}")
    warn_unread(sorted(set(data) - {"caption", "width", "height", "annos"}), where)
    objects, extras = [], set()
    for i, anno in enumerate(annos):
        at = f"{where}: annos[{i}]"
        if not isinstance(anno, dict):
            raise refuse(f"{at} must be an object with 'bbox' and 'caption' (or 'category_name'), got {short(anno)}")
        if "bbox" not in anno:
            raise refuse(f"{at} has no 'bbox' (keys: {', '.join(sorted(anno))}); this project's layouts are boxes: give each anno a "
                         "'bbox' [x, y, w, h] in pixels")
        texts = [anno.get(k) for k in ("caption", "category_name")]
        text = next((t for t in texts if isinstance(t, str) and t.strip()), None)
        if text is None:
            raise refuse(f"{at} has neither a 'caption' nor a 'category_name' phrase (got {short(texts[0])}, {short(texts[1])}); "
                         "give the box a phrase")
        extras |= {k for k in INSTANCE_EXTRAS if anno.get(k) not in (None, [])}
        extras |= set(anno) - {"bbox", "caption", "category_name", *INSTANCE_EXTRAS}
        objects.append({"text": text, "box": pixel_box(anno["bbox"], f"{at}.bbox", width, height, clip)})
    warn_unread(sorted(extras), f"{where}: annos")
    return objects, caption, (width, height)


def to_instancediffusion(objects: Objects, width: int, height: int, caption: str | None = None,
                         class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Checked objects -> InstanceDiffusion's input (``caption`` "" when none is given; an object's
    label, when it has one, is also its ``category_name``)."""
    annos = []
    for i, obj in enumerate(objects):
        text = object_text(obj, f"object {i}", class_names)
        annos.append({"bbox": scaled(obj["box"], width, height), "mask": [],
                      "category_name": text if "label" in obj else "", "caption": text})
    return {"caption": caption or "", "width": width, "height": height, "annos": annos}


# --------------------------------------------------------------------------- COCO

def coco_index(data: dict[str, Any], where: str) -> Any:
    """A ``pycocotools.coco.COCO`` index of ``data`` (its progress lines go to the debug log)."""
    from pycocotools.coco import COCO

    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list) or not all(isinstance(v, dict) for v in data[key]):
            raise refuse(f"{where}: a COCO file's '{key}' must be a list of objects, got {short(data.get(key))}")
    coco, printed = COCO(), io.StringIO()
    coco.dataset = data
    try:
        with redirect_stdout(printed):
            coco.createIndex()
    except (KeyError, TypeError) as err:
        raise refuse(f"{where}: malformed COCO file ({type(err).__name__}: {err}); every image needs an 'id', every annotation "
                     "'id', 'image_id' and 'category_id', every category 'id' and 'name'") from None
    log.debug("%s", printed.getvalue().strip())
    return coco


def coco_image(coco: Any, image: int | str | None, where: str) -> dict[str, Any]:
    """The image entry ``image`` names (its ``file_name``, or its ``id``); the only one when ``None``."""
    images = coco.dataset["images"]
    if not images:
        raise UserError(f"{where} holds no images (its 'images' list is empty)")
    if image is None:
        if len(images) == 1:
            return images[0]
        examples = ", ".join(f"{im.get('id')} ({im.get('file_name')})" for im in images[:3])
        raise UserError(f"{where} holds {len(images)} images; name one by id or file name (image=, --image), e.g. {examples}")
    found = [im for im in images if isinstance(image, str) and im.get("file_name") == image]
    if not found:
        ident = int(image) if isinstance(image, str) and image.strip().isdigit() else image
        found = [im for im in images if im.get("id") == ident and not isinstance(ident, bool)]
    if not found:
        raise UserError(f"{where} has no image with file_name or id {short(image)} ({len(images)} images, e.g. "
                        + ", ".join(f"{im.get('id')} ({im.get('file_name')})" for im in images[:3]) + ")")
    return found[0]


def from_coco(data: dict[str, Any], where: str, image: int | str | None = None, clip: bool = False) -> tuple[Objects, tuple[int, int]]:
    """One image's annotations of a COCO instances file -> (objects, (width, height)); each box's
    text is its category's name (crowd annotations are boxes like any other; segmentations are not read)."""
    coco = coco_index(data, where)
    entry = coco_image(coco, image, where)
    width, height = image_size(entry.get("width"), entry.get("height"), f"{where}: image {entry['id']}",
                               "the keys 'width' and 'height' of its entry in 'images'")
    objects = []
    for ann in coco.imgToAnns.get(entry["id"], []):
        at = f"{where}: annotation id {ann['id']}"
        if ann["category_id"] not in coco.cats:
            raise refuse(f"{at}: category_id {short(ann['category_id'])} is not in 'categories' (ids: "
                         f"{', '.join(map(str, list(coco.cats)[:10]))}{' ...' if len(coco.cats) > 10 else ''})")
        text = phrase(coco.cats[ann["category_id"]].get("name"), f"{where}: category {ann['category_id']} 'name'")
        if "bbox" not in ann:
            raise refuse(f"{at} has no 'bbox'; give each annotation a bbox [x, y, w, h] in pixels")
        objects.append({"text": text, "box": pixel_box(ann["bbox"], f"{at}: bbox", width, height, clip)})
    return objects, (width, height)


def to_coco(objects: Objects, width: int, height: int, file_name: str = "layout.png",
            class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Checked objects -> a minimal COCO instances file of one image (id 1): one category per distinct
    phrase (ids from 1, in order of first use), each box an annotation with its area and its rectangle
    as the segmentation polygon."""
    texts = [object_text(o, f"object {i}", class_names) for i, o in enumerate(objects)]
    category = {t: i + 1 for i, t in enumerate(dict.fromkeys(texts))}
    annotations = []
    for i, (obj, text) in enumerate(zip(objects, texts)):
        box = scaled(obj["box"], width, height)
        x0, y0, x1, y1 = box_to_corners(box)
        annotations.append({"id": i + 1, "image_id": 1, "category_id": category[text], "bbox": box, "area": box[2] * box[3],
                            "iscrowd": 0, "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    return {"images": [{"id": 1, "file_name": file_name, "width": width, "height": height}], "annotations": annotations,
            "categories": [{"id": i, "name": t, "supercategory": ""} for t, i in category.items()]}


# --------------------------------------------------------------------------- files

def detect_format(data: Any, where: str = "layout") -> str:
    """Which of :data:`FORMATS` the JSON document ``data`` is, by its content."""
    if isinstance(data, list):
        return "layoutdiffuse"
    if isinstance(data, dict):
        if "gligen_phrases" in data or "gligen_boxes" in data:
            return "gligen"
        if "annos" in data:
            return "instancediffusion"
        if "images" in data and "annotations" in data:
            return "coco"
    got = f"an object with keys {', '.join(sorted(map(str, data))[:8]) or '(none)'}" if isinstance(data, dict) else type(data).__name__
    raise refuse(f"{where} is not a layout this project reads: expected a list of {{\"text\" | \"label\", \"box\"}} objects "
                 "(layoutdiffuse), an object with 'gligen_phrases' and 'gligen_boxes' (GLIGEN), with 'caption', 'width', "
                 f"'height' and 'annos' (InstanceDiffusion), or with 'images', 'annotations' and 'categories' (COCO); got {got}")


def read_layout(path: str | os.PathLike, image: int | str | None = None, clip: bool = False) -> ReadLayout:
    """Read a layout file of any of :data:`FORMATS` (detected by content). ``image`` picks one image of a
    COCO file (its ``file_name`` or ``id``; needed when the file holds several); ``clip`` cuts boxes that
    leave the image to it (with a warning) instead of refusing them."""
    path = check_readable(path, "layout file")
    from .layout import LayoutError  # read_json refuses with it (torch: reading checks boxes through layout.py anyway)

    data = read_json(path, "layout file", LayoutError)
    fmt = detect_format(data, str(path))
    if image is not None and fmt != "coco":
        raise UserError(f"{path} is a {fmt} layout of one image; image= (--image) picks an image of a COCO file")
    where, size, caption = str(path), None, None
    if fmt == "layoutdiffuse":
        objects = check_objects(data, where, clip)
    elif fmt == "gligen":
        objects, caption = from_gligen(data, where, clip)
    elif fmt == "instancediffusion":
        objects, caption, size = from_instancediffusion(data, where, clip)
    else:
        objects, size = from_coco(data, where, image, clip)
    return ReadLayout(objects, caption, fmt, size)


def read_layout_objects(path: str | os.PathLike, image: int | str | None = None, clip: bool = False) -> tuple[Objects, str | None]:
    """``(objects, caption)`` of a layout file of any of :data:`FORMATS` (see :func:`read_layout`)."""
    read = read_layout(path, image, clip)
    return read.objects, read.caption


def layout_document(objects: Any, format: str = "layoutdiffuse", caption: str | None = None, width: int | None = None,
                    height: int | None = None, class_names: Sequence[str] | None = None, file_name: str = "layout.png") -> Any:
    """This project's ``objects`` as the JSON document of ``format`` (see :func:`write_layout`)."""
    if format not in FORMATS:
        raise UserError(f"unknown layout format {short(format)}; choose one of: {', '.join(FORMATS)}")
    if caption is not None and not isinstance(caption, str):
        raise UserError(f"caption must be a string, got {short(caption)}")
    objects = check_objects(objects, "layout")
    if format in PIXEL_FORMATS:
        width, height = image_size(width, height, f"writing a {format} layout")
    if caption is not None and format in ("layoutdiffuse", "coco"):
        log.warning("a %s layout file holds no caption; the caption %s is not written%s", format, short(caption, 60),
                    " (give it to sample as --prompt / prompt=)" if format == "layoutdiffuse" else "")
    if format == "layoutdiffuse":
        return objects
    if format == "gligen":
        return to_gligen(objects, caption, class_names)
    if format == "instancediffusion":
        return to_instancediffusion(objects, width, height, caption, class_names)
    return to_coco(objects, width, height, file_name, class_names)


def write_layout(objects: Any, path: str | os.PathLike, format: str = "layoutdiffuse", caption: str | None = None,
                 width: int | None = None, height: int | None = None, class_names: Sequence[str] | None = None,
                 file_name: str = "layout.png") -> Path:
    """Write this project's layout ``objects`` (``[{"text" | "label", "box": [x, y, w, h]}]``, normalised)
    to ``path`` in ``format`` (one of :data:`FORMATS`), atomically. ``caption``: GLIGEN's ``prompt``,
    InstanceDiffusion's ``caption``. ``width``, ``height``: the image size in pixels, needed by the pixel
    formats (InstanceDiffusion, COCO). ``class_names`` turn integer labels into phrases. ``file_name``:
    the COCO image's file name."""
    document = layout_document(objects, format, caption, width, height, class_names, file_name)
    return save_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", path)
