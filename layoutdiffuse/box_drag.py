"""The geometry of drawing boxes with the mouse (no widgets here, so it is tested on its own).

Coordinates are fractions of the canvas, ``(0, 0)`` top-left, boxes ``[x, y, w, h]``. A press
(:func:`start_drag`) on a corner handle of a box resizes it (the opposite corner stays), inside a
box moves it, elsewhere draws a new box; each pointer position then gives the dragged box
(:meth:`Drag.box`), always inside the canvas: a moved box keeps its size and stops at the edges,
a resized or drawn box spans the press corner and the pointer clamped into the canvas.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

Box = list[float]


def clamp01(v: float) -> float:
    return min(max(v, 0.0), 1.0)


def corners(box: Sequence[float]) -> list[tuple[float, float]]:
    """Top-left, top-right, bottom-left, bottom-right."""
    x, y, w, h = box
    return [(x, y), (x + w, y), (x, y + h), (x + w, y + h)]


@dataclass
class Drag:
    """One press-drag-release: ``kind`` is ``draw``, ``move`` or ``resize``; ``index`` the object
    moved or resized (None when drawing); ``anchor`` the fixed corner (draw/resize) or the press
    point (move); ``origin`` the box when pressed (move)."""

    kind: str
    index: int | None
    anchor: tuple[float, float]
    origin: Box | None = None

    def box(self, u: float, v: float) -> Box:
        """The dragged box for the pointer at ``(u, v)`` (may be outside the canvas)."""
        if self.kind == "move":
            x, y, w, h = self.origin
            nx = min(max(x + u - self.anchor[0], 0.0), 1.0 - w)
            ny = min(max(y + v - self.anchor[1], 0.0), 1.0 - h)
            return [nx, ny, w, h]
        (ax, ay), u, v = self.anchor, clamp01(u), clamp01(v)
        return [min(ax, u), min(ay, v), abs(u - ax), abs(v - ay)]


def start_drag(boxes: Sequence[Sequence[float]], u: float, v: float, handle: float, selected: int | None = None) -> Drag:
    """What a press at ``(u, v)`` starts. ``handle``: the corner grab radius (fraction of the canvas);
    the ``selected`` box is tried first, then the others from the top (last drawn) down."""
    order = ([selected] if selected is not None and 0 <= selected < len(boxes) else []) + [i for i in range(len(boxes) - 1, -1, -1) if i != selected]
    for i in order:
        cs = corners(boxes[i])
        for k, (cx, cy) in enumerate(cs):
            if abs(u - cx) <= handle and abs(v - cy) <= handle:
                return Drag("resize", i, cs[3 - k])  # the opposite corner stays
    for i in order:
        x, y, w, h = boxes[i]
        if x <= u <= x + w and y <= v <= y + h:
            return Drag("move", i, (u, v), list(boxes[i]))
    return Drag("draw", None, (clamp01(u), clamp01(v)))
