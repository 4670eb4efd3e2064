"""Interactive layout-to-image sampling in Jupyter: draw a layout with sliders, sample, save.

    from layoutdiffuse.sampling import load_model
    from layoutdiffuse.widgets import LayoutSampler

    ui = LayoutSampler(load_model())
    ui.widget                                   # display it (the last expression of a cell)

Every button runs a method, so the same UI can be driven from code (and tested)::

    ui.add_object("7", [0.1, 0.1, 0.4, 0.6])   # label: class name or id; box: [x, y, w, h] in [0, 1]
    ui.layout()                                 # (N, 5) tensor of rows (x, y, w, h, class)
    images = ui.sample()                        # (n, C, H, W) in [-1, 1], or None (see ui.message)
    ui.save("outputs")                          # layout_000.json (+ grid_000.png once sampled)

Boxes always stay inside the canvas: when ``x + w`` (or ``y + h``) would pass 1, the slider you
move keeps its value and its partner gives way. User errors (an invalid layout, a sampler that
rejects the step count, a folder that cannot be written) are shown in ``message`` as one line,
never as a traceback; the full traceback goes to this module's logger at DEBUG level.

Needs ``ipywidgets>=8`` (the ``notebooks`` extra).
"""
from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import ipywidgets as W
import pytorch_lightning as pl
import torch
from torchvision.io import encode_png

from .layout import LayoutError
from .diffusion import SAMPLERS
from .layout_file import layout_to_json, parse_layout, save_layout
from .sampling import is_layout_model
from .sampling import sample as sample_images
from .visualize import draw_layouts, grid, save_grid
from .errors import UserError

log = logging.getLogger(__name__)

MIN_SIZE = 0.02  # smallest box side, so that a box never has zero area
DEFAULT_BOX = (0.25, 0.25, 0.5, 0.5)
PREVIEW_PX = 256


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
    return W.FloatSlider(value=value, min=lo, max=hi, step=0.01, description=name, readout_format=".2f",
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
    """An ipywidgets UI around a layout model: edit a layout, preview it, sample, save.

    Args:
        module: a trained module (``load_model()`` or ``load_checkpoint(...)``); a layout model
            normally, an unconditional one samples the empty layout only.
        folder: default output folder for the save buttons.
        n: default number of samples.
        max_objects: the most objects the add button creates.

    Attributes (the widgets, for layout and for tests): ``widget`` (the whole UI), ``rows``
    (one :class:`ObjectRow` per object), ``add_button``, ``preview`` (Image), ``sampler``,
    ``steps``, ``guidance``, ``seed``, ``count``, ``sample_button``, ``grid_image`` (Image),
    ``folder``, ``save_layout_button``, ``save_grid_button``, ``message`` (HTML).
    After a successful sample: ``images (n, C, H, W)``, ``layouts (n, N, 5)`` or None, ``grid_png``.
    """

    def __init__(self, module: pl.LightningModule, folder: str | Path = "outputs", n: int = 8, max_objects: int = 8):
        self.module = module
        self.conditional = is_layout_model(module)
        if self.conditional:
            self.class_names = list(module.class_names or [str(i) for i in range(module.model.adaptor.num_classes)])
        else:
            self.class_names = []
        self.max_objects = max_objects
        self.image_shape = tuple(module.image_shape)
        self.images: torch.Tensor | None = None
        self.layouts: torch.Tensor | None = None
        self.grid_png: bytes | None = None
        self.stale = False  # the layout changed since the last sample
        self.rows: list[ObjectRow] = []
        self.last_message = ""
        self._clamping = False
        self._layout_error = False

        defaults = getattr(module, "sampling_args", {})
        self.objects_box = W.VBox([])
        self.add_button = W.Button(description="Add object", icon="plus", disabled=not self.conditional)
        self.preview = W.Image(format="png", layout=W.Layout(width=f"{PREVIEW_PX}px", height=f"{PREVIEW_PX}px", border="1px solid #ccc"))
        self.sampler = W.Dropdown(options=SAMPLERS.names(), value=defaults.get("sampler") if defaults.get("sampler") in SAMPLERS else "ddim", description="sampler", layout=W.Layout(width="190px"))
        T = module.diffusion.num_timesteps
        self.steps = W.BoundedIntText(value=min(int(defaults.get("steps") or 50), T), min=1, max=T, description="steps", layout=W.Layout(width="150px"))
        self.guidance = W.BoundedFloatText(value=float(defaults.get("guidance", 1.0)), min=0.0, max=50.0, step=0.5, description="guidance",
                                           disabled=not self.conditional, layout=W.Layout(width="160px"))
        self.seed = W.IntText(value=0, description="seed", layout=W.Layout(width="150px"))
        self.count = W.BoundedIntText(value=n, min=1, max=64, description="count", layout=W.Layout(width="150px"))
        self.sample_button = W.Button(description="Sample", icon="play", button_style="primary")
        self.grid_image = W.Image(format="png")
        self.folder = W.Text(value=str(folder), description="folder", layout=W.Layout(width="260px"))
        self.save_layout_button = W.Button(description="Save layout", icon="save")
        self.save_grid_button = W.Button(description="Save grid", icon="save")
        self.message = W.HTML()

        self.add_button.on_click(lambda _: self._guard("add object", lambda: self.add_object(self._next_label(), DEFAULT_BOX)))
        self.sample_button.on_click(lambda _: self.sample())
        self.save_layout_button.on_click(lambda _: self._guard("save layout", self._save_layout))
        self.save_grid_button.on_click(lambda _: self._guard("save grid", self._save_grid))

        editor = W.VBox([W.HTML("<b>Layout</b> (boxes: top-left corner x, y and size w, h, as fractions of the canvas)"), self.objects_box, self.add_button])
        controls = W.HBox([self.sampler, self.steps, self.guidance, self.seed, self.count])
        actions = W.HBox([self.sample_button, self.folder, self.save_layout_button, self.save_grid_button])
        self.widget = W.VBox([W.HBox([editor, self.preview]), controls, actions, self.message, self.grid_image])
        self._redraw()
        if not self.conditional:
            self._say("this model takes no layout: Sample draws unconditional images")

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
        self.rows.pop(i)
        self._rows_changed()

    def clear(self) -> None:
        """Remove every object (the empty layout: unconditional samples)."""
        self.rows.clear()
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
        self.sample_button.disabled = True
        try:
            start = time.perf_counter()
            images, layouts = sample_images(layout if self.conditional else None, n=n, ckpt=self.module, sampler=name, steps=steps,
                                            guidance=self.guidance.value if self.conditional else None, seed=self.seed.value)
        finally:
            self.sample_button.disabled = False
        self.images, self.layouts, self.stale = images.cpu(), None if layouts is None else layouts.cpu(), False
        self.grid_png = png_bytes(grid(self.images, self.layouts, self.class_names or None))
        self.grid_image.value = self.grid_png
        empty = " (empty layout: unconditional samples)" if self.conditional and len(layout) == 0 else ""
        self._say(f"sampled {what} in {time.perf_counter() - start:.1f} s{empty}")
        return self.images

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

    def _save_layout(self) -> Path:
        path = self._folder(None)
        written = self._write_layout(path, self._free_index(path, ["layout_{:03d}.json"]))
        self._say_saved([written])
        return written

    def _save_grid(self) -> Path:
        path = self._folder(None)
        written = self._write_grid(path, self._free_index(path, ["grid_{:03d}.png"]))
        self._say_saved([written])
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
        """The live preview: the boxes and labels drawn on an empty canvas."""
        c, h, w = self.image_shape
        scale = max(1, PREVIEW_PX // w)
        try:
            layout = self.layout()
        except LayoutError as err:
            self._say(f"invalid layout: {err}", error=True)
            self._layout_error = True
            return
        if self._layout_error:  # the layout is valid again: clear its error
            self._layout_error = False
            self._say("")
        canvas = torch.full((1, c, h, w), -0.85)  # a dark grey canvas, so its edge shows
        self.preview.value = png_bytes(draw_layouts(canvas, layout[None], self.class_names or None, scale=scale)[0])

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
