"""Interactive layout-to-image sampling in Jupyter: draw a layout with the mouse, sample, edit, save.

    from layoutdiffuse.sampling import load_model
    from layoutdiffuse.widgets import LayoutSampler

    ui = LayoutSampler(load_model())
    ui.widget                                   # display it (the last expression of a cell)

On the canvas: drag on an empty spot to add a box (of the class chosen in ``class``), drag a box
to move it, drag one of its corners to resize it, click it to select it (then ``class`` re-labels
it and **Delete box** removes it). The sliders under the canvas are the precise editor of the same
boxes; both stay in sync. **Sample** draws ``count`` images for the layout; once sampled, the
canvas shows sample ``edit #`` under the boxes, and **Edit** re-generates that sample for the
current layout, changing only the boxes that were moved, resized, re-labelled, added or removed
(:func:`layoutdiffuse.editing.edit_images`). **Save** writes the layout file and the grid.

Every button and mouse gesture runs a method, so the same UI can be driven from code (and tested)::

    ui.add_object("7", [0.1, 0.1, 0.4, 0.6])   # label: class name or id; box: [x, y, w, h] in [0, 1]
    ui.drag((10, 10), (120, 200))               # a mouse drag on the canvas, in canvas pixels
    ui.layout()                                 # (N, 5) tensor of rows (x, y, w, h, class)
    images = ui.sample()                        # (n, C, H, W) in [-1, 1], or None (see ui.message)
    ui.edit()                                   # edit sample ui.pick.value for the current layout
    ui.save("outputs")                          # layout_000.json (+ grid_000.png once sampled)

Boxes always stay inside the canvas: a drag past the edge is clamped, a drag of less than
``MIN_DRAG_PX`` adds nothing, and when ``x + w`` (or ``y + h``) would pass 1 on the sliders, the
slider you move keeps its value and its partner gives way. User errors (an invalid layout, a
sampler that rejects the step count, a folder that cannot be written) are shown in ``message`` as
one line, never as a traceback; the full traceback goes to this module's logger at DEBUG level.

Models with a text encoder get a prompt and a negative-prompt box; the others take boxes only.
Needs ``ipywidgets>=8`` and ``ipycanvas`` (the ``notebooks`` extra).
"""
from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import ipywidgets as W
import numpy as np
import pytorch_lightning as pl
import torch
from ipycanvas import Canvas, hold_canvas
from torchvision.io import encode_png

from .box_drag import Drag, start_drag
from .diffusion import SAMPLERS
from .editing import edit_images
from .errors import UserError
from .layout import LayoutError, pad_layouts
from .layout_file import parse_layout, save_layout
from .sampling import sample as sample_images
from .visualize import PALETTE, grid, save_grid, to_uint8

log = logging.getLogger(__name__)

MIN_SIZE = 0.02  # smallest box side, so that a box never has zero area
DEFAULT_BOX = (0.25, 0.25, 0.5, 0.5)
CANVAS_PX = 256  # the drawing canvas, square, in screen pixels
HANDLE_PX = 7  # a press this close to a corner of a box resizes it
MIN_DRAG_PX = 4  # a drawn box smaller than this either way is not added


def png_bytes(image: torch.Tensor) -> bytes:
    """uint8 ``(3, H, W)`` -> PNG file bytes (for an ``ipywidgets.Image``)."""
    return encode_png(image.cpu()).numpy().tobytes()


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


def _slider(name: str, value: float, lo: float, hi: float) -> W.FloatSlider:
    return W.FloatSlider(value=value, min=lo, max=hi, step=0.001, description=name, readout_format=".2f",
                         continuous_update=True, style={"description_width": "12px"}, layout=W.Layout(width="170px"))


@dataclass
class ObjectRow:
    """The controls of one object: a class dropdown, x/y/w/h sliders and a remove button."""

    label: W.Dropdown
    x: W.FloatSlider
    y: W.FloatSlider
    w: W.FloatSlider
    h: W.FloatSlider
    remove: W.Button
    box: W.HBox

    @classmethod
    def create(cls, class_names: Sequence[str], label: str, box: Sequence[float]) -> "ObjectRow":
        x, y, w, h = box
        label_w = W.Dropdown(options=list(class_names), value=label, layout=W.Layout(width="90px"))
        sliders = [_slider("x", x, 0.0, 1.0 - MIN_SIZE), _slider("y", y, 0.0, 1.0 - MIN_SIZE),
                   _slider("w", w, MIN_SIZE, 1.0), _slider("h", h, MIN_SIZE, 1.0)]
        remove = W.Button(description="✕", tooltip="remove this object", layout=W.Layout(width="36px"))
        return cls(label_w, *sliders, remove, W.HBox([label_w, *sliders, remove]))

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label.value, "box": [self.x.value, self.y.value, self.w.value, self.h.value]}


class LayoutSampler:
    """An ipywidgets UI around a layout model: draw a layout, sample, edit, save.

    Args:
        module: a trained module (``load_model()`` or ``load_checkpoint(...)``); a layout model
            normally, an unconditional one samples the empty layout only.
        folder: default output folder for the save button.
        n: default number of samples.
        max_objects: the most objects the layout may have.

    Attributes (the widgets, for layout and for tests): ``widget`` (the whole UI), ``canvas``
    (ipycanvas, ``CANVAS_PX`` square), ``pen`` (class of new boxes / of the selected box),
    ``delete_button``, ``selected`` (index or None), ``rows`` (one :class:`ObjectRow` per object),
    ``add_button``, ``sampler``, ``steps``, ``guidance``, ``seed``, ``count``, ``prompt`` and
    ``negative_prompt`` (text models only, else None), ``sample_button``, ``pick`` (the sample Edit
    starts from), ``resample``, ``edit_button``, ``grid_image`` (Image), ``folder``,
    ``save_button``, ``message`` (HTML).
    After a successful sample or edit: ``images (n, C, H, W)``, ``layouts (n, N, 5)`` or None,
    ``grid_png``, ``seconds`` (the time it took).
    """

    def __init__(self, module: pl.LightningModule, folder: str | Path = "outputs", n: int = 8, max_objects: int = 8):
        self.module = module
        self.conditional = module.is_layout_model
        self.text = module.is_text_model
        self.class_names = module.label_names
        self.max_objects = max_objects
        self.image_shape = tuple(module.image_shape)
        self.images: torch.Tensor | None = None
        self.layouts: torch.Tensor | None = None
        self.grid_png: bytes | None = None
        self.seconds: float | None = None
        self.stale = False  # the layout changed since the last sample
        self.rows: list[ObjectRow] = []
        self.selected: int | None = None
        self.last_message = ""
        self._clamping = False
        self._layout_error = False
        self._drag: Drag | None = None
        self._draft: list[float] | None = None  # the box being drawn, before it is added
        self._background: np.ndarray | None = None

        defaults = module.sampling_args
        self.canvas = Canvas(width=CANVAS_PX, height=CANVAS_PX, layout=W.Layout(width=f"{CANVAS_PX}px", height=f"{CANVAS_PX}px", border="1px solid #ccc"))
        self.canvas.on_mouse_down(lambda u, v: self._guard("drawing", lambda: self.press(u, v)))
        self.canvas.on_mouse_move(lambda u, v: self._guard("drawing", lambda: self.move_to(u, v)))
        self.canvas.on_mouse_up(lambda u, v: self._guard("drawing", lambda: self.release(u, v)))
        self.canvas.on_mouse_out(lambda u, v: self._guard("drawing", lambda: self.release(u, v)))
        self.pen = W.Dropdown(options=self.class_names, value=self.class_names[0] if self.class_names else None, description="class",
                              disabled=not self.conditional, layout=W.Layout(width="170px"))
        self.pen.observe(lambda _: self._guard("re-label", self._pen_changed), names="value")
        self.delete_button = W.Button(description="Delete box", icon="trash", disabled=True, layout=W.Layout(width="110px"))
        self.delete_button.on_click(lambda _: self._guard("delete", self.delete_selected))
        self.objects_box = W.VBox([])
        self.add_button = W.Button(description="Add object", icon="plus", disabled=not self.conditional)
        self.sampler = W.Dropdown(options=SAMPLERS.names(), value=defaults.get("sampler") if defaults.get("sampler") in SAMPLERS else "ddim", description="sampler", layout=W.Layout(width="190px"))
        T = module.diffusion.num_timesteps
        self.steps = W.BoundedIntText(value=min(int(defaults.get("steps") or 50), T), min=1, max=T, description="steps", layout=W.Layout(width="150px"))
        self.guidance = W.BoundedFloatText(value=float(defaults.get("guidance", 1.0)), min=0.0, max=50.0, step=0.5, description="guidance",
                                           disabled=not self.conditional, layout=W.Layout(width="160px"))
        self.seed = W.IntText(value=0, description="seed", layout=W.Layout(width="150px"))
        self.count = W.BoundedIntText(value=n, min=1, max=64, description="count", layout=W.Layout(width="150px"))
        self.prompt = W.Text(description="prompt", layout=W.Layout(width="420px")) if self.text else None
        self.negative_prompt = W.Text(description="negative", layout=W.Layout(width="420px")) if self.text else None
        self.sample_button = W.Button(description="Sample", icon="play", button_style="primary")
        self.pick = W.BoundedIntText(value=0, min=0, max=n - 1, description="edit #", layout=W.Layout(width="140px"))
        self.pick.observe(lambda _: self._guard("pick", self._show_pick), names="value")
        self.resample = W.BoundedIntText(value=0, min=0, max=20, description="resample", layout=W.Layout(width="150px"))
        self.edit_button = W.Button(description="Edit", icon="pencil", disabled=True,
                                    tooltip="re-generate sample 'edit #' for the current layout: only the changed boxes change")
        self.grid_image = W.Image(format="png")
        self.folder = W.Text(value=str(folder), description="folder", layout=W.Layout(width="260px"))
        self.save_button = W.Button(description="Save", icon="save", tooltip="write the layout file and the grid into the folder")
        self.message = W.HTML()

        self.add_button.on_click(lambda _: self._guard("add object", lambda: self.add_object(self.pen.value or self._next_label(), DEFAULT_BOX)))
        self.sample_button.on_click(lambda _: self.sample())
        self.edit_button.on_click(lambda _: self.edit())
        self.save_button.on_click(lambda _: self.save())

        hint = ("drag on the canvas to add a box, drag a box to move it, drag a corner to resize, click to select"
                if self.conditional else "this model takes no layout")
        text_note = "" if self.text else " · boxes only: this model reads no text prompt"
        drawing = W.VBox([self.canvas, W.HBox([self.pen, self.delete_button]), W.HTML(f"<small>{html.escape(hint + text_note)}</small>")])
        editor = W.VBox([W.HTML("<b>Layout</b> (boxes: top-left corner x, y and size w, h, as fractions of the canvas)"), self.objects_box, self.add_button])
        controls = W.HBox([self.sampler, self.steps, self.guidance, self.seed, self.count])
        prompts = [W.HBox([self.prompt, self.negative_prompt])] if self.text else []
        actions = W.HBox([self.sample_button, self.pick, self.resample, self.edit_button, self.folder, self.save_button])
        self.widget = W.VBox([W.HBox([drawing, editor]), controls, *prompts, actions, self.message, self.grid_image])
        self.canvas.on_client_ready(lambda: self._guard("redraw", self._redraw))
        self._redraw()
        if not self.conditional:
            self._say("this model takes no layout: Sample draws unconditional images")

    # --- the mouse (canvas pixels) ------------------------------------------------------------
    def press(self, px: float, py: float) -> None:
        """Mouse down at canvas pixel ``(px, py)``: select and start moving / resizing a box, or start drawing one."""
        if not self.conditional:
            return
        boxes = [self._box(row) for row in self.rows]
        self._drag = start_drag(boxes, px / CANVAS_PX, py / CANVAS_PX, HANDLE_PX / CANVAS_PX, self.selected)
        self._select(self._drag.index)
        self._draft = [*self._drag.anchor, 0.0, 0.0] if self._drag.kind == "draw" else None
        self._redraw()

    def move_to(self, px: float, py: float) -> None:
        """Mouse move: update the dragged box (nothing when no button is down)."""
        if self._drag is None:
            return
        box = self._drag.box(px / CANVAS_PX, py / CANVAS_PX)
        if self._drag.kind == "draw":
            self._draft = box
            self._redraw()
        else:
            self._set_box(self._drag.index, box)

    def release(self, px: float, py: float) -> None:
        """Mouse up (or out of the canvas): finish the drag; a drawn box of at least ``MIN_DRAG_PX`` is added."""
        drag, self._drag = self._drag, None
        if drag is None:
            return
        box = drag.box(px / CANVAS_PX, py / CANVAS_PX)
        self._draft = None
        if drag.kind != "draw":
            self._set_box(drag.index, box)
            return
        if min(box[2], box[3]) * CANVAS_PX < MIN_DRAG_PX:
            self._redraw()
            if max(box[2], box[3]) > 0:  # a click on an empty spot only deselects
                self._say(f"a box needs a drag of at least {MIN_DRAG_PX} px each way: nothing added")
            return
        self._select(self.add_object(self.pen.value, box))

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 4) -> None:
        """A whole mouse drag from ``start`` to ``end`` (canvas pixels), with ``steps`` moves between."""
        self.press(*start)
        for k in range(1, steps + 1):
            self.move_to(start[0] + (end[0] - start[0]) * k / steps, start[1] + (end[1] - start[1]) * k / steps)
        self.release(*end)

    def delete_selected(self) -> None:
        """Remove the selected box (the Delete button)."""
        if self.selected is None:
            raise UserError("no box selected: click a box on the canvas first")
        self.remove_object(self.selected)

    def _select(self, i: int | None) -> None:
        self.selected = i
        self.delete_button.disabled = i is None
        if i is not None and self.pen.value != self.rows[i].label.value:
            self.pen.value = self.rows[i].label.value  # the pen shows the selected box's class

    def _pen_changed(self) -> None:
        if self.selected is not None and self.rows[self.selected].label.value != self.pen.value:
            self.rows[self.selected].label.value = self.pen.value  # re-label the selected box

    @staticmethod
    def _box(row: "ObjectRow") -> list[float]:
        return [row.x.value, row.y.value, row.w.value, row.h.value]

    def _set_box(self, i: int, box: Sequence[float]) -> None:
        """Set the sliders of object ``i`` at once (the clamper waits), then redraw."""
        row = self.rows[i]
        self._clamping = True
        try:
            row.x.value, row.y.value, row.w.value, row.h.value = clamp_box(list(box))
        finally:
            self._clamping = False
        self._changed()

    # --- the layout -----------------------------------------------------------------------
    def add_object(self, label: str | int, box: Sequence[float] = DEFAULT_BOX) -> int:
        """Add an object; ``label`` is a class name or id, ``box`` ``[x, y, w, h]`` (clamped into
        the canvas). Returns its index. Raises :class:`LayoutError` for an unknown label or a bad box."""
        if not self.conditional:
            raise LayoutError("this model takes no layout (it is not a LayoutDiffuse model); sample it with an empty layout")
        if len(self.rows) >= self.max_objects:
            raise LayoutError(f"at most {self.max_objects} objects (max_objects); remove one first")
        row = ObjectRow.create(self.class_names, self._label_name(label), clamp_box(box))
        row.remove.on_click(lambda _: self._guard("remove object", lambda: self.remove_object(self.rows.index(row))))
        row.label.observe(lambda _: self._changed(), names="value")
        for pos, size in ((row.x, row.w), (row.y, row.h)):
            pos.observe(self._clamper(pos, size, moved_is_pos=True), names="value")
            size.observe(self._clamper(pos, size, moved_is_pos=False), names="value")
        self.rows.append(row)
        self._rows_changed()
        return len(self.rows) - 1

    def remove_object(self, i: int) -> None:
        """Remove object ``i`` (negative indices count from the end)."""
        if not -len(self.rows) <= i < len(self.rows):
            raise IndexError(f"no object {i}: the layout has {len(self.rows)} object(s)")
        i = i % len(self.rows)
        self.rows.pop(i)
        if self.selected is not None:
            self._select(None if self.selected == i else self.selected - (self.selected > i))
        self._rows_changed()

    def clear(self) -> None:
        """Remove every object (the empty layout: unconditional samples)."""
        self.rows.clear()
        self._select(None)
        self._rows_changed()

    def objects(self) -> list[dict[str, Any]]:
        """The layout as layout-file objects ``[{"label", "box"}]``."""
        return [row.to_json() for row in self.rows]

    def layout(self) -> torch.Tensor:
        """The validated layout ``(N, 5)`` of rows ``(x, y, w, h, class)``; raises :class:`LayoutError`."""
        if not self.conditional:
            return torch.zeros(0, 5)
        return parse_layout(self.objects(), self.class_names)

    # --- sampling and saving (what the buttons run) ----------------------------------------
    def sample(self) -> torch.Tensor | None:
        """Sample ``count`` images for the current layout with the chosen settings, show the grid.

        Returns the images ``(n, C, H, W)`` in [-1, 1], or ``None`` after an error (shown in
        ``message``), exactly as the Sample button does.
        """
        return self._guard("sampling", self._sample)

    def edit(self) -> torch.Tensor | None:
        """Re-generate sample ``pick`` for the current layout: ``count`` versions in which only the
        boxes changed since it was sampled (moved, resized, re-labelled, added, removed) are drawn
        anew, the rest of the picture kept exactly. Returns the images ``(n, C, H, W)`` (they become
        the current samples, so edits chain), or ``None`` after an error (shown in ``message``)."""
        return self._guard("edit", self._edit)

    def save(self, folder: str | Path | None = None) -> list[Path]:
        """Write the current layout (``layout_NNN.json``) and, once sampled, the grid (``grid_NNN.png``)
        under ``folder`` (default: the folder box) with the next free number. Returns the paths
        written (``[]`` after an error, shown in ``message``)."""
        return self._guard("save", lambda: self._save(folder)) or []

    def _sample(self) -> torch.Tensor:
        layout = self.layout()
        n, name, steps = self.count.value, self.sampler.value, self.steps.value
        what = f"{n} image(s), {name}, {steps} steps" + (f", guidance {self.guidance.value:g}" if self.conditional else "")
        self._say(f"sampling {what} for {len(layout)} object(s) ...")
        text = {"prompt": self.prompt.value, "negative_prompt": self.negative_prompt.value or None} if self.text else {}
        with self._busy():
            start = time.perf_counter()
            images, layouts = sample_images(layout if self.conditional else None, n=n, ckpt=self.module, sampler=name, steps=steps,
                                            guidance=self.guidance.value if self.conditional else None, seed=self.seed.value, **text)
            seconds = time.perf_counter() - start
        self._show(images, layouts, seconds)
        empty = " (empty layout: unconditional samples)" if self.conditional and len(layout) == 0 else ""
        self._say(f"sampled {what} in {seconds:.1f} s{empty}")
        return self.images

    def _edit(self) -> torch.Tensor:
        if self.images is None or self.layouts is None:
            raise UserError("nothing to edit yet: press Sample, then move, resize, re-label, add or remove boxes and press Edit")
        k, n, name, steps = self.pick.value, self.count.value, self.sampler.value, self.steps.value
        old, new = pad_layouts([self.layouts[k], self.layout()])
        self._say(f"editing sample {k}: {n} version(s), {name}, {steps} steps ...")
        with self._busy():
            start = time.perf_counter()
            g = torch.Generator(device=self.module.device).manual_seed(self.seed.value)
            images, region = edit_images(self.module, self.images[k : k + 1].expand(n, -1, -1, -1), old[None].expand(n, -1, -1),
                                         new[None].expand(n, -1, -1), sampler=name, steps=steps, guidance=self.guidance.value,
                                         resample=self.resample.value, generator=g)
            seconds = time.perf_counter() - start
        self._show(images, new[None].expand(n, -1, -1), seconds)
        self._say(f"edited sample {k}: {n} version(s) in {seconds:.1f} s; re-generated {region[0].float().mean().item():.0%} of the canvas, "
                  "the rest kept exactly")
        return self.images

    def _busy(self):
        """Disable Sample and Edit while running (a context manager)."""
        from contextlib import contextmanager

        @contextmanager
        def busy():
            self.sample_button.disabled = self.edit_button.disabled = True
            try:
                yield
            finally:
                self.sample_button.disabled = False
                self.edit_button.disabled = self.images is None or not self.conditional

        return busy()

    def _show(self, images: torch.Tensor, layouts: torch.Tensor | None, seconds: float) -> None:
        """New current samples: the grid, the sample to edit under the boxes."""
        self.images, self.layouts, self.stale, self.seconds = images.cpu(), None if layouts is None else layouts.cpu(), False, seconds
        self.grid_png = png_bytes(grid(self.images, self.layouts, self.class_names or None))
        self.grid_image.value = self.grid_png
        self.pick.max = len(self.images) - 1
        self.edit_button.disabled = not self.conditional
        self._show_pick()

    def _show_pick(self) -> None:
        """The canvas background: sample ``pick`` (what Edit starts from), nearest-neighbour upscaled."""
        if self.images is None:
            return
        img = to_uint8(self.images[self.pick.value : self.pick.value + 1])[0]  # (3, H, W)
        up = torch.nn.functional.interpolate(img[None].float(), size=(CANVAS_PX, CANVAS_PX), mode="nearest")[0]
        self._background = up.permute(1, 2, 0).to(torch.uint8).numpy()
        self._redraw()

    def _folder(self, folder: str | Path | None) -> Path:
        name = str(folder if folder is not None else self.folder.value).strip()
        if not name:
            raise UserError("the folder is empty: type a folder to save into, e.g. outputs")
        path = Path(name).expanduser()
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"cannot save into {path}: it is a file, not a folder")
        return path

    @staticmethod
    def _free_index(folder: Path, patterns: Sequence[str]) -> int:
        i = 0
        while any((folder / p.format(i)).exists() for p in patterns):
            i += 1
        return i

    def _write_layout(self, folder: Path, i: int) -> Path:
        return save_layout(self.layout(), folder / f"layout_{i:03d}.json", self.class_names)

    def _write_grid(self, folder: Path, i: int) -> Path:
        if self.images is None:
            raise UserError("nothing sampled yet: press Sample first")
        return save_grid(self.images, folder / f"grid_{i:03d}.png", layouts=self.layouts, class_names=self.class_names or None)

    def _save(self, folder: str | Path | None) -> list[Path]:
        path = self._folder(folder)
        i = self._free_index(path, ["layout_{:03d}.json", "grid_{:03d}.png"])
        written = [self._write_layout(path, i)] + ([self._write_grid(path, i)] if self.images is not None else [])
        self._say_saved(written)
        return written

    def _say_saved(self, paths: list[Path]) -> None:
        note = " (note: the layout changed since this grid was sampled)" if self.stale and any(p.suffix == ".png" for p in paths) else ""
        self._say("saved " + ", ".join(map(str, paths)) + note)

    # --- internals ----------------------------------------------------------------------
    def _label_name(self, label: str | int) -> str:
        if isinstance(label, str) and label in self.class_names:
            return label
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(self.class_names):
            return self.class_names[label]
        shown = ", ".join(self.class_names[:20]) + (" ..." if len(self.class_names) > 20 else "")
        raise LayoutError(f"unknown label {label!r}; use a class name ({shown}) or an id in [0, {len(self.class_names)})")

    def _next_label(self) -> str:
        return self.class_names[len(self.rows) % len(self.class_names)]

    def _clamper(self, pos: W.FloatSlider, size: W.FloatSlider, moved_is_pos: bool) -> Callable[[dict], None]:
        """Keep ``pos + size <= 1``: the slider being moved keeps its value, its partner gives way."""

        def on_change(_: dict) -> None:
            if self._clamping:
                return
            self._clamping = True
            try:
                if pos.value + size.value > 1.0:
                    if moved_is_pos:
                        size.value = round(1.0 - pos.value, 6)
                    else:
                        pos.value = round(1.0 - size.value, 6)
            finally:
                self._clamping = False
            self._changed()

        return on_change

    def _rows_changed(self) -> None:
        self.objects_box.children = [row.box for row in self.rows]
        self.add_button.disabled = not self.conditional or len(self.rows) >= self.max_objects
        self._changed()

    def _changed(self) -> None:
        self.stale = self.images is not None
        self._redraw()

    def _redraw(self) -> None:
        """Draw the canvas: the sample to edit (or a dark canvas), the boxes with their labels, the
        selected box with its corner handles, the box being drawn."""
        try:
            layout = self.layout()
        except LayoutError as err:
            self._say(f"invalid layout: {err}", error=True)
            self._layout_error = True
            return
        if self._layout_error:  # the layout is valid again: clear its error
            self._layout_error = False
            self._say("")
        c = self.canvas
        with hold_canvas(c):
            c.clear()
            if self._background is not None:
                c.put_image_data(self._background, 0, 0)
            else:
                c.fill_style = "#262626"
                c.fill_rect(0, 0, CANVAS_PX, CANVAS_PX)
            c.font = "12px sans-serif"
            for i, (x, y, w, h, cls) in enumerate(layout.tolist()):
                color = PALETTE[int(cls) % len(PALETTE)]
                c.stroke_style, c.fill_style = color, color
                c.line_width = 3 if i == self.selected else 1.5
                c.stroke_rect(x * CANVAS_PX, y * CANVAS_PX, w * CANVAS_PX, h * CANVAS_PX)
                c.fill_text(self.class_names[int(cls)], x * CANVAS_PX + 3, y * CANVAS_PX + 13)
                if i == self.selected:
                    for cx, cy in ((x, y), (x + w, y), (x, y + h), (x + w, y + h)):
                        c.fill_rect(cx * CANVAS_PX - 3, cy * CANVAS_PX - 3, 6, 6)
            if self._draft is not None:
                x, y, w, h = self._draft
                c.stroke_style, c.line_width = "#ffffff", 1
                c.set_line_dash([4, 3])
                c.stroke_rect(x * CANVAS_PX, y * CANVAS_PX, w * CANVAS_PX, h * CANVAS_PX)
                c.set_line_dash([])

    def _say(self, text: str, error: bool = False) -> None:
        color = "#b00020" if error else "#333"
        self.message.value = f'<span style="color:{color}">{html.escape(text)}</span>'
        self.last_message = text

    def _guard(self, what: str, action: Callable[[], Any]) -> Any:
        """Run ``action``; an exception becomes a one-line message in the UI (traceback at DEBUG)."""
        try:
            return action()
        except Exception as err:  # the UI shows every failure as a message, never a traceback
            log.debug("%s failed", what, exc_info=True)
            text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            if not isinstance(err, (ValueError, KeyError, OSError, IndexError)):
                text = f"{type(err).__name__}: {text}"
            self._say(f"{what} failed: {text}", error=True)
            return None
