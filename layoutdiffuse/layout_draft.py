"""The layout being drawn, without any widget: its objects, the selected one, the mouse gesture in
progress, and the rules that keep every box inside the canvas. :class:`layoutdiffuse.widgets.LayoutSampler`
is a view of one :class:`LayoutDraft` (the source of truth); tests drive a draft directly.

A draft for a model that reads a phrase per box (``text=True``) holds a phrase as each object's
label (any non-empty words; the model's encoder reads them) and reads as a layout file's
``{"text", "box"}`` objects; its layout's classes index the draft's distinct phrases
(:meth:`LayoutDraft.layout_and_names`), as for every phrase layout (:func:`~layoutdiffuse.layout_file.parse_phrase_layout`).

Coordinates are fractions of the canvas, ``(0, 0)`` top-left, boxes ``[x, y, w, h]``. Every change
calls the listeners with what changed: ``"objects"`` (an object added or removed, or the layout
cleared), ``("box", i)``, ``("label", i)``, ``"selection"``, ``"preview"`` (the box being drawn).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .box_drag import Drag, start_drag
from .errors import UserError
from .layout import LayoutError
from .layout_file import parse_layout, parse_phrase_layout

MIN_SIZE = 0.02  # smallest box side, so that a box never has zero area
DEFAULT_BOX = (0.25, 0.25, 0.5, 0.5)
SIDES = ("x", "y", "w", "h")
PARTNER = {"x": "w", "w": "x", "y": "h", "h": "y"}  # position and size along one axis


def clamp_box(box: Sequence[float]) -> list[float]:
    """``[x, y, w, h]`` -> the nearest box inside the canvas, keeping the corner (sizes shrink first).

    Positions go to ``[0, 1 - MIN_SIZE]``, sizes to ``[MIN_SIZE, 1 - position]``.
    """
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
        raise LayoutError(f"a box is a list of 4 numbers [x, y, w, h] in [0, 1], got {box!r}")
    if not all(v == v and abs(v) != float("inf") for v in box):
        raise LayoutError(f"a box must be finite, got {box!r}")
    x, y = (min(max(float(v), 0.0), 1.0 - MIN_SIZE) for v in box[:2])
    w, h = (max(float(v), MIN_SIZE) for v in box[2:])
    return [x, y, min(w, 1.0 - x), min(h, 1.0 - y)]


@dataclass
class DraftObject:
    """One object of the draft: its class name (``None`` while a dropdown shows nothing) or phrase, and box."""

    label: Any
    box: list[float]

    def to_json(self, key: str = "label") -> dict[str, Any]:
        return {key: self.label, "box": list(self.box)}


class LayoutDraft:
    """A layout under construction: objects, selection, mouse gestures, clamping.

    Args:
        class_names: the model's classes (labels are kept as these names).
        max_objects: the most objects the layout may have.
        handle: how close (fraction of the canvas) a press must be to a corner to resize the box.
        min_drag: a drawn box smaller than this (fraction of the canvas) either way is not added.
        enabled: ``False`` for a model that takes no layout (every change is refused).
        text: the model reads a phrase per box: labels are phrases (``class_names`` unused).
    """

    def __init__(self, class_names: Sequence[str], max_objects: int = 8, handle: float = 0.03, min_drag: float = 0.015,
                 enabled: bool = True, text: bool = False):
        self.class_names, self.text = list(class_names), text
        self.max_objects, self.handle, self.min_drag, self.enabled = max_objects, handle, min_drag, enabled
        self.objects: list[DraftObject] = []
        self.selected: int | None = None
        self.preview: list[float] | None = None  # the box being drawn, before it is added
        self._drag: Drag | None = None
        self._listeners: list[Callable[[Any], None]] = []

    # --- listeners ---------------------------------------------------------------------------
    def observe(self, listener: Callable[[Any], None]) -> None:
        """Call ``listener(what)`` after every change (see the module docstring for ``what``)."""
        self._listeners.append(listener)

    def _notify(self, what: Any) -> None:
        for listener in self._listeners:
            listener(what)

    # --- objects -------------------------------------------------------------------------------
    def label_name(self, label: str | int) -> str:
        """A class name or id -> the class name; raises :class:`LayoutError` naming the classes. For a
        text draft: a phrase (white space normalised; an integer is its text) -> the phrase."""
        if self.text:  # the checks of a layout file's "text"
            try:
                return parse_phrase_layout([{"text": label, "box": list(DEFAULT_BOX)}])[1][0]
            except LayoutError as err:
                raise LayoutError(str(err).removeprefix("object 0: ")) from None
        if isinstance(label, str) and label in self.class_names:
            return label
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(self.class_names):
            return self.class_names[label]
        shown = ", ".join(self.class_names[:20]) + (" ..." if len(self.class_names) > 20 else "")
        raise LayoutError(f"unknown label {label!r}; use a class name ({shown}) or an id in [0, {len(self.class_names)})")

    def next_label(self) -> str:
        """A class for a new object when none is chosen: the classes in turn. A text draft has no
        phrase to choose: it raises :class:`LayoutError` asking for one."""
        if self.text:
            raise LayoutError("a new box needs its phrase: type it in the text field first (e.g. \"a red seven\")")
        return self.class_names[len(self.objects) % len(self.class_names)]

    def add(self, label: str | int, box: Sequence[float] = DEFAULT_BOX) -> int:
        """Add an object (``box`` clamped into the canvas); returns its index."""
        if not self.enabled:
            raise LayoutError("this model takes no layout (it is not a LayoutDiffuse model); sample it with an empty layout")
        if len(self.objects) >= self.max_objects:
            raise LayoutError(f"at most {self.max_objects} objects (max_objects); remove one first")
        self.objects.append(DraftObject(self.label_name(label), clamp_box(box)))
        self._notify("objects")
        return len(self.objects) - 1

    def remove(self, i: int) -> None:
        """Remove object ``i`` (negative indices count from the end); the selection follows its box."""
        if not -len(self.objects) <= i < len(self.objects):
            raise IndexError(f"no object {i}: the layout has {len(self.objects)} object(s)")
        i %= len(self.objects)
        self.objects.pop(i)
        self._drag = self.preview = None  # a drag in progress may hold this object's index
        if self.selected is not None:
            self.selected = None if self.selected == i else self.selected - (self.selected > i)
        self._notify("objects")

    def clear(self) -> None:
        """Remove every object (the empty layout)."""
        self.objects.clear()
        self.selected, self._drag = None, None
        self._notify("objects")

    def delete_selected(self) -> None:
        """Remove the selected object."""
        if self.selected is None:
            raise UserError("no box selected: click a box on the canvas first")
        self.remove(self.selected)

    def select(self, i: int | None) -> None:
        if i != self.selected:
            self.selected = i
            self._notify("selection")

    def set_label(self, i: int, label: Any) -> None:
        """Re-label object ``i``; the label is checked when the layout is read (:meth:`layout`)."""
        if self.objects[i].label != label:
            self.objects[i].label = label
            self._notify(("label", i))

    def set_box(self, i: int, box: Sequence[float]) -> None:
        """Set the whole box of object ``i`` (clamped into the canvas)."""
        box = clamp_box(list(box))
        if box != self.objects[i].box:
            self.objects[i].box = box
            self._notify(("box", i))

    def set_side(self, i: int, side: str, value: float) -> None:
        """Set one of ``x``, ``y``, ``w``, ``h`` of object ``i`` as a slider does: when position + size
        would pass 1, the side being set keeps its value and its partner gives way."""
        box = dict(zip(SIDES, self.objects[i].box))
        box[side] = value
        pos, size = ("x", "w") if side in ("x", "w") else ("y", "h")
        if box[pos] + box[size] > 1.0:
            box[PARTNER[side]] = round(1.0 - box[side], 6)
        self.set_box(i, [box[s] for s in SIDES])

    # --- the mouse ----------------------------------------------------------------------------
    def press(self, u: float, v: float) -> None:
        """Mouse down at ``(u, v)``: select and start moving / resizing a box, or start drawing one."""
        if not self.enabled:
            return
        self._drag = start_drag([o.box for o in self.objects], u, v, self.handle, self.selected)
        self.select(self._drag.index)
        if self._drag.kind == "draw":
            self.preview = [*self._drag.anchor, 0.0, 0.0]
            self._notify("preview")

    def move_to(self, u: float, v: float) -> None:
        """Mouse move: update the dragged box (nothing when no button is down)."""
        if self._drag is None:
            return
        box = self._drag.box(u, v)
        if self._drag.kind == "draw":
            self.preview = box
            self._notify("preview")
        else:
            self.set_box(self._drag.index, box)

    def release(self, u: float, v: float, label: str | int | None = None) -> str | None:
        """Mouse up (or out of the canvas): finish the drag. A drawn box of at least ``min_drag`` each
        way is added with ``label`` (default: the next class) and selected. Returns a note for the
        user when a drag was too small to add a box, else ``None``."""
        drag, self._drag = self._drag, None
        if drag is None:
            return None
        box = drag.box(u, v)
        if drag.kind != "draw":
            self.set_box(drag.index, box)
            return None
        self.preview = None
        self._notify("preview")
        if min(box[2], box[3]) < self.min_drag:
            return "too small" if max(box[2], box[3]) > 0 else None  # a click on an empty spot only deselects
        self.select(self.add(self.next_label() if label is None else label, box))
        return None

    # --- reading ------------------------------------------------------------------------------
    def to_json(self) -> list[dict[str, Any]]:
        """The layout as layout-file objects ``[{"label", "box"}]`` (a text draft: ``[{"text", "box"}]``)."""
        return [o.to_json("text" if self.text else "label") for o in self.objects]

    def layout_and_names(self) -> tuple[torch.Tensor, list[str]]:
        """The validated layout ``(N, 5)`` of rows ``(x, y, w, h, class)`` and the names its classes
        index: the class names, or a text draft's distinct phrases. Raises :class:`LayoutError`."""
        if not self.enabled:
            return torch.zeros(0, 5), []
        if self.text:
            return parse_phrase_layout(self.to_json())
        return parse_layout(self.to_json(), self.class_names), self.class_names

    def layout(self) -> torch.Tensor:
        """The validated layout ``(N, 5)`` of rows ``(x, y, w, h, class)``; raises :class:`LayoutError`."""
        return self.layout_and_names()[0]
