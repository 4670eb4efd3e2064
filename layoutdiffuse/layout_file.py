"""Layout files: a small JSON format for drawing layouts by hand or in the widget notebook.

    [{"label": "7", "box": [0.1, 0.2, 0.4, 0.5]}, {"label": 3, "box": [x, y, w, h]}]

Boxes are ``[x, y, w, h]`` normalised to [0, 1] (top-left corner and size); labels are class
names or integer ids. ``[]`` is the empty layout (an unconditional sample).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from .layout import LayoutError, validate_layout
from .errors import MissingFileError
from .schema import short


def parse_layout(objects: Any, class_names: Sequence[str]) -> torch.Tensor:
    """A list of ``{"label", "box"}`` objects -> validated layout ``(N, 5)``."""
    if not isinstance(objects, list):
        raise LayoutError(f"a layout is a JSON list of objects like {{\"label\": \"7\", \"box\": [x, y, w, h]}}, got {type(objects).__name__}")
    if len(objects) > MAX_OBJECTS:
        raise LayoutError(f"a layout holds at most {MAX_OBJECTS} objects, got {len(objects)}")
    rows = []
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or set(obj) - {"label", "box"} or not {"label", "box"} <= set(obj):
            raise LayoutError(f"object {i}: expected exactly the keys 'label' and 'box', got {short(obj)}")
        label, box = obj["label"], obj["box"]
        if isinstance(label, str) and label in class_names:
            cls = list(class_names).index(label)
        elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(class_names):
            cls = label
        else:
            shown = ", ".join(class_names[:20]) + (" ..." if len(class_names) > 20 else "")
            raise LayoutError(f"object {i}: unknown label {short(label)}; use a class name ({shown}) or an id in [0, {len(class_names)})")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            raise LayoutError(f"object {i}: 'box' must be a list of 4 numbers [x, y, w, h] in [0, 1], got {short(box)}")
        try:
            rows.append([*map(float, box), float(cls)])
        except OverflowError:  # an integer beyond any float (1 followed by 400 zeros)
            raise LayoutError(f"object {i}: 'box' holds a number too large for a float; give numbers in [0, 1], got {short(box)}") from None
    layout = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)
    return validate_layout(layout, len(class_names))


#: a layout file is a short hand-written list; anything larger is not one
MAX_LAYOUT_BYTES = 1 << 20
#: objects in one layout (the datasets have at most a few dozen)
MAX_OBJECTS = 256


def load_layout(path: str | Path, class_names: Sequence[str]) -> torch.Tensor:
    """Read and validate a layout file (UTF-8, with or without a byte-order mark) -> ``(N, 5)``."""
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
    try:
        return parse_layout(objects, class_names)
    except LayoutError as err:
        raise LayoutError(f"{path}: {err}") from None


def layout_to_json(layout: torch.Tensor, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """``(N, 5)`` -> the JSON objects of a layout file (padding rows dropped)."""
    return [{"label": class_names[int(r[4])], "box": [round(float(v), 4) for v in r[:4]]} for r in layout if r[4] >= 0]


def save_layout(layout: torch.Tensor, path: str | Path, class_names: Sequence[str]) -> Path:
    from .files import save_text

    return save_text(json.dumps(layout_to_json(layout, class_names), indent=1), path)
