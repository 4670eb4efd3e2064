"""Layout files: a small JSON format for drawing layouts by hand or in the widget notebook.

    [{"label": "7", "box": [0.1, 0.2, 0.4, 0.5]}, {"label": 3, "box": [x, y, w, h]}]

Boxes are ``[x, y, w, h]`` normalised to [0, 1] (top-left corner and size); labels are class
names or integer ids. ``[]`` is the empty layout (an unconditional sample).

A model that reads a phrase per box (``instance_prompt: "text"``) takes ``"text"`` instead::

    [{"text": "a red seven", "box": [0.1, 0.2, 0.4, 0.5]}, {"label": "3", "box": [x, y, w, h]}]

(a label is then its text). The layouts of GLIGEN, InstanceDiffusion and COCO files load too
(:mod:`layoutdiffuse.layout_formats`: their phrases as text; for a class model a phrase that is a
class name is that class). Such a layout is read as the same ``(N, 5)`` tensor whose class column
indexes a list of *names*, here the layout's distinct phrases (:func:`parse_phrase_layout`), so
padding, batching, drawing and saving are one implementation for both kinds of box.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from .layout import LayoutError, validate_layout
from .errors import MissingFileError
from .conditions import MAX_PHRASE_CHARS
from .schema import short


def _objects(objects: Any, text: bool, class_names: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The objects of a layout checked for their keys: ``label`` (or, ``text``, ``text``) and ``box``."""
    if not isinstance(objects, list):
        raise LayoutError(f"a layout is a JSON list of objects like {{\"label\": \"7\", \"box\": [x, y, w, h]}}, got {type(objects).__name__}")
    if len(objects) > MAX_OBJECTS:
        raise LayoutError(f"a layout holds at most {MAX_OBJECTS} objects, got {len(objects)}")
    for i, obj in enumerate(objects):
        if text and isinstance(obj, dict) and {"text", "box"} == set(obj):
            continue
        if isinstance(obj, dict) and not text and "text" in obj:
            shown = ", ".join(class_names[:20]) + (" ..." if len(class_names) > 20 else "")
            raise LayoutError(f"object {i} gives a phrase ('text'), but this model reads classes ({shown}), not text; give 'label' "
                              "with one of them (a phrase per box needs a text model, e.g. --ckpt layout-mnist-color)")
        if not isinstance(obj, dict) or set(obj) != {"label", "box"}:
            keys = "'label' (or 'text') and 'box'" if text else "'label' and 'box'"
            raise LayoutError(f"object {i}: expected exactly the keys {keys}, got {short(obj)}")
    return objects


def _row(i: int, box: Any, cls: int) -> list[float]:
    if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        raise LayoutError(f"object {i}: 'box' must be a list of 4 numbers [x, y, w, h] in [0, 1], got {short(box)}")
    try:
        return [*map(float, box), float(cls)]
    except OverflowError:  # an integer beyond any float (1 followed by 400 zeros)
        raise LayoutError(f"object {i}: 'box' holds a number too large for a float; give numbers in [0, 1], got {short(box)}") from None


def parse_layout(objects: Any, class_names: Sequence[str]) -> torch.Tensor:
    """A list of ``{"label", "box"}`` objects -> validated layout ``(N, 5)``."""
    if isinstance(objects, list):  # a phrase that is a class name is that class (another project's layout of these classes)
        objects = [{"label": o["text"], "box": o["box"]} if isinstance(o, dict) and set(o) == {"text", "box"} and o["text"] in class_names
                   else o for o in objects]
    rows = []
    for i, obj in enumerate(_objects(objects, text=False, class_names=class_names)):
        label = obj["label"]
        if isinstance(label, str) and label in class_names:
            cls = list(class_names).index(label)
        elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(class_names):
            cls = label
        else:
            shown = ", ".join(class_names[:20]) + (" ..." if len(class_names) > 20 else "")
            raise LayoutError(f"object {i}: unknown label {short(label)}; use a class name ({shown}) or an id in [0, {len(class_names)})")
        rows.append(_row(i, obj["box"], cls))
    layout = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
    return validate_layout(layout, len(class_names))


def parse_phrase_layout(objects: Any) -> tuple[torch.Tensor, list[str]]:
    """A list of ``{"text", "box"}`` (or ``{"label", "box"}``: the label is the text) objects ->
    ``(layout (N, 5), phrases)``: each row's class is the index of its phrase in ``phrases``, the
    layout's distinct phrases (white space normalised) in order of appearance."""
    rows, phrases = [], {}
    for i, obj in enumerate(_objects(objects, text=True)):
        value = obj.get("text", obj.get("label"))
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise LayoutError(f"object {i}: a box's text must be a non-empty phrase such as \"a red seven\", got {short(value)}")
        if len(value) > MAX_PHRASE_CHARS:
            raise LayoutError(f"object {i}: a box's text holds at most {MAX_PHRASE_CHARS} characters, got {len(value)} ({short(value)})")
        text = " ".join(value.split())
        rows.append(_row(i, obj["box"], phrases.setdefault(text, len(phrases))))
    layout = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
    return validate_layout(layout, max(len(phrases), 1)), list(phrases)


#: a layout file is a short hand-written list; anything larger is not one
MAX_LAYOUT_BYTES = 1 << 20
#: objects in one layout (the datasets have at most a few dozen)
MAX_OBJECTS = 256


def load_layout(path: str | Path, class_names: Sequence[str]) -> torch.Tensor:
    """Read and validate a layout file (UTF-8, with or without a byte-order mark) -> ``(N, 5)``."""
    return _load(path, lambda objects: parse_layout(objects, class_names))


def load_phrase_layout(path: str | Path) -> tuple[torch.Tensor, list[str]]:
    """Read a layout file for a text model -> ``(layout (N, 5), phrases)`` (:func:`parse_phrase_layout`)."""
    return _load(path, parse_phrase_layout)


def _load(path: str | Path, parse: Any) -> Any:
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"layout file {path} does not exist")
    if not path.is_file():
        raise LayoutError(f"layout path {path} is a folder (or not a regular file); give a .json layout file")
    size = path.stat().st_size
    if size > MAX_LAYOUT_BYTES:
        raise LayoutError(f"layout file {path} is {size / 1e6:.1f} MB; a layout file holds at most {MAX_OBJECTS} objects "
                          f"and {MAX_LAYOUT_BYTES >> 20} MB")
    try:
        objects = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        raise LayoutError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise LayoutError(f"{path} is not valid JSON: {err}") from err
    except RecursionError:
        raise LayoutError(f"{path} nests JSON too deeply; a layout is a flat list of {{\"label\", \"box\"}} objects") from None
    except OSError as err:
        raise LayoutError(f"cannot read layout file {path}: {err.strerror or err}") from None
    if isinstance(objects, dict):  # another project's layout (GLIGEN, InstanceDiffusion, COCO): its boxes as text objects
        from .layout_formats import read_layout_objects

        objects = read_layout_objects(path)[0]
    try:
        return parse(objects)
    except LayoutError as err:
        raise LayoutError(f"{path}: {err}") from None


def layout_to_json(layout: torch.Tensor, class_names: Sequence[str], text: bool = False) -> list[dict[str, Any]]:
    """``(N, 5)`` -> the JSON objects of a layout file (padding rows dropped); ``text``: the names are
    phrases, written as ``"text"``."""
    key = "text" if text else "label"
    return [{key: class_names[int(r[4])], "box": [round(float(v), 4) for v in r[:4]]} for r in layout if r[4] >= 0]


def save_layout(layout: torch.Tensor, path: str | Path, class_names: Sequence[str], text: bool = False) -> Path:
    from .files import save_text

    return save_text(json.dumps(layout_to_json(layout, class_names, text), indent=1), path)
