"""Interactive layout-to-image sampling in Jupyter: draw a layout with the mouse, sample, edit, save.

    from layoutdiffuse.sampling import load_model
    from layoutdiffuse.widgets import LayoutSampler

    ui = LayoutSampler(load_model())
    ui.widget                                   # display it (the last expression of a cell)

On the canvas: drag on an empty spot to add a box (of the class chosen in ``class``), drag a box
to move it, drag one of its corners to resize it, click it to select it (then ``class`` re-labels
it and **Delete box** removes it). The sliders under the canvas are the precise editor of the same
boxes; both stay in sync. **Sample** draws ``count`` images for the layout; once sampled, the
canvas shows sample ``edit #`` under the boxes until the layout changes (then the canvas is
cleared; the grid below keeps the samples), and **Edit** re-generates that sample for the current
layout, changing only the boxes that were moved, resized, re-labelled, added or removed
(:func:`layoutdiffuse.editing.edit_images`). **Save** writes the layout file and the grid.

The layout itself -- objects, selection, gestures, clamping -- lives in a widget-free
:class:`~layoutdiffuse.layout_draft.LayoutDraft` (``ui.draft``); this module is its view: it copies
every change of the draft into the sliders and the canvas, and every slider move into the draft.

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

A model that reads a phrase per box (``load_model("layout-mnist-color")``) gets a ``text`` field
instead of the ``class`` dropdown, and each row a text field: a drawn box takes the phrase typed
there, typing in it re-phrases the selected box, and **Edit** after re-phrasing a box ("make the 7
blue") re-generates that box only. Its layout files hold ``{"text", "box"}`` objects.

Models with a text encoder get a prompt and a negative-prompt box; the others take boxes only.
``LayoutSampler(module, device=..., dtype=...)`` passes both on to sampling. Needs ``ipywidgets>=8`` and ``ipycanvas`` (the ``notebooks`` extra).
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

from .diffusion import SAMPLERS
from .editing import common_names, edit_images
from .errors import UserError
from .layout import LayoutError, pad_layouts
from .layout_draft import DEFAULT_BOX, MIN_SIZE, SIDES, LayoutDraft, clamp_box
from .layout_file import save_layout
from .sampling import sample as sample_images
from .visualize import PALETTE, grid, save_grid, to_uint8

log = logging.getLogger(__name__)

__all__ = ["LayoutSampler", "ObjectRow", "clamp_box", "MIN_SIZE", "CANVAS_PX", "MIN_DRAG_PX"]

CANVAS_PX = 256  # the drawing canvas, square, in screen pixels
HANDLE_PX = 7  # a press this close to a corner of a box resizes it
MIN_DRAG_PX = 4  # a drawn box smaller than this either way is not added
EMPTY_CANVAS = "#262626"


def png_bytes(image: torch.Tensor) -> bytes:
    """uint8 ``(3, H, W)`` -> PNG file bytes (for an ``ipywidgets.Image``)."""
    return encode_png(image.cpu()).numpy().tobytes()


def phrase_vocabulary(module: pl.LightningModule) -> tuple[str, ...]:
    """The words a phrase model's own phrase encoder knows (the toys'), or ``()``."""
    encoder = getattr(getattr(module.sampling_model, "adaptor", None), "phrase_encoder", None)
    return tuple(getattr(encoder, "words", ()))


def _slider(name: str, value: float, lo: float, hi: float) -> W.FloatSlider:
    # a fixed description width and an explicit track width: with only an outer width the track of
    # ipywidgets 8 collapsed to its knob in JupyterLab (issue 27)
    return W.FloatSlider(value=value, min=lo, max=hi, step=0.001, description=name, readout_format=".2f",
                         continuous_update=True, style={"description_width": "14px"},
                         layout=W.Layout(width="220px", min_width="220px", flex="0 0 auto"))


@dataclass
class ObjectRow:
    """The controls of one object: a class dropdown (a phrase model: a text field), x/y/w/h sliders and a remove button."""

    label: W.Dropdown | W.Text
    x: W.FloatSlider
    y: W.FloatSlider
    w: W.FloatSlider
    h: W.FloatSlider
    remove: W.Button
    box: W.HBox

    @classmethod
    def create(cls, class_names: Sequence[str], label: Any, box: Sequence[float], text: bool = False) -> "ObjectRow":
        x, y, w, h = box
        if text:  # sent on Enter or when the field loses focus, not at every key (a half-typed phrase is not a layout)
            label_w = W.Text(value=label, placeholder="the box's phrase", continuous_update=False,
                             layout=W.Layout(width="150px", flex="0 0 auto"))
        else:
            label_w = W.Dropdown(options=list(class_names), value=label, layout=W.Layout(width="70px", flex="0 0 auto"))
        sliders = [_slider("x", x, 0.0, 1.0 - MIN_SIZE), _slider("y", y, 0.0, 1.0 - MIN_SIZE),
                   _slider("w", w, MIN_SIZE, 1.0), _slider("h", h, MIN_SIZE, 1.0)]
        remove = W.Button(icon="times", tooltip="remove this object", layout=W.Layout(width="34px", min_width="34px", padding="0", flex="0 0 auto"))
        x_, y_, w_, h_ = sliders  # two lines: class x y / remove w h
        grid_ = W.GridBox([label_w, x_, y_, remove, w_, h_], layout=W.Layout(grid_template_columns="repeat(3, max-content)", grid_gap="2px 8px"))
        return cls(label_w, *sliders, remove, W.HBox([grid_], layout=W.Layout(border_bottom="1px solid #ddd", padding="2px 0")))

    def sliders(self) -> list[W.FloatSlider]:
        return [self.x, self.y, self.w, self.h]


class LayoutSampler:
    """An ipywidgets view of a :class:`~layoutdiffuse.layout_draft.LayoutDraft` around a layout model:
    draw a layout, sample, edit, save.

    Args:
        module: a trained module (``load_model()`` or ``load_checkpoint(...)``); a layout model
            normally, an unconditional one samples the empty layout only.
        folder: default output folder for the save button.
        n: default number of samples.
        max_objects: the most objects the layout may have.
        device, dtype: passed on to :func:`layoutdiffuse.sampling.sample` (where the model samples,
            in which precision); ``None`` leaves the model as it is.

    Attributes (the widgets, for layout and for tests): ``widget`` (the whole UI), ``draft`` (the
    layout, the source of truth), ``canvas`` (ipycanvas, ``CANVAS_PX`` square), ``pen`` (class of
    new boxes / of the selected box; a phrase model: a text field with the phrase), ``phrase_model``,
    ``delete_button``, ``selected`` (index or None), ``rows`` (one :class:`ObjectRow` per object), ``add_button``, ``sampler``, ``steps``, ``guidance``, ``seed``,
    ``count``, ``prompt`` and ``negative_prompt`` (text models only, else None), ``sample_button``,
    ``pick`` (the sample Edit starts from), ``resample``, ``edit_button``, ``grid_image`` (Image),
    ``folder``, ``save_button``, ``message`` (HTML).
    After a successful sample or edit: ``images (n, C, H, W)``, ``layouts (n, N, 5)`` or None,
    ``names`` (what the classes of ``layouts`` index: the class names or the phrases), ``grid_png``,
    ``seconds`` (the time it took). The canvas shows sample ``pick`` under the boxes until the
    layout changes; then it is cleared (the grid below keeps the samples).
    """

    def __init__(self, module: pl.LightningModule, folder: str | Path = "outputs", n: int = 8, max_objects: int = 8,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        self.module = module
        self.conditional = module.is_layout_model
        self.text = module.is_text_model
        self.phrase_model = module.is_phrase_model
        self.class_names = module.label_names  # empty for a phrase model: its boxes name themselves
        self.max_objects = max_objects
        self.device, self.dtype = device, dtype
        self.image_shape = tuple(module.image_shape)
        self.images: torch.Tensor | None = None
        self.layouts: torch.Tensor | None = None
        self.names: list[str] = []
        self.grid_png: bytes | None = None
        self.seconds: float | None = None
        self.stale = False  # the layout changed since the last sample
        self.rows: list[ObjectRow] = []
        self.last_message = ""
        self._syncing = False  # the view is copying the draft into its widgets
        self._layout_error = False
        self._background: np.ndarray | None = None
        self.draft = LayoutDraft(self.class_names, max_objects, handle=HANDLE_PX / CANVAS_PX, min_drag=MIN_DRAG_PX / CANVAS_PX,
                                 enabled=self.conditional, text=self.phrase_model)
        self.draft.observe(self._draft_changed)

        defaults = module.sampling_args
        self.canvas = Canvas(width=CANVAS_PX, height=CANVAS_PX, layout=W.Layout(width=f"{CANVAS_PX}px", height=f"{CANVAS_PX}px"))
        self.canvas.on_mouse_down(lambda u, v: self._guard("drawing", lambda: self.press(u, v)))
        self.canvas.on_mouse_move(lambda u, v: self._guard("drawing", lambda: self.move_to(u, v)))
        self.canvas.on_mouse_up(lambda u, v: self._guard("drawing", lambda: self.release(u, v)))
        self.canvas.on_mouse_out(lambda u, v: self._guard("drawing", lambda: self.release(u, v)))
        if self.phrase_model:
            self.pen = W.Text(value="", description="text", placeholder="the phrase of a new or the selected box", continuous_update=False,
                              layout=W.Layout(width="300px"))
        else:
            self.pen = W.Dropdown(options=self.class_names, value=self.class_names[0] if self.class_names else None, description="class",
                                  disabled=not self.conditional, layout=W.Layout(width="150px"))
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

        self.add_button.on_click(lambda _: self._guard("add object", lambda: self.add_object(self.pen.value or self.draft.next_label(), DEFAULT_BOX)))
        self.sample_button.on_click(lambda _: self.sample())
        self.edit_button.on_click(lambda _: self.edit())
        self.save_button.on_click(lambda _: self.save())

        hint = ("drag on the canvas to add a box, drag a box to move it, drag a corner to resize, click to select"
                if self.conditional else "this model takes no layout")
        if self.phrase_model:
            words = phrase_vocabulary(module)
            hint += (" · type a box's phrase in text (before drawing it, or after selecting it)"
                     + (f"; this model's words: {' '.join(words)}" if words else ""))
        text_note = "" if self.text or self.phrase_model else " · boxes only: this model reads no text prompt"
        framed = W.Box([self.canvas], layout=W.Layout(border="1px solid #ccc", width="fit-content", flex="0 0 auto"))  # a border
        # on the canvas itself would squeeze its 256 pixels into 254 on screen
        drawing = W.VBox([framed, W.HBox([self.pen, self.delete_button]),
                          W.HTML(f"<small>{html.escape(hint + text_note)}</small>", layout=W.Layout(width=f"{CANVAS_PX + 10}px"))],
                         layout=W.Layout(flex="0 0 auto"))
        editor = W.VBox([W.HTML("<b>Layout</b> (boxes: top-left corner x, y and size w, h, as fractions of the canvas)"), self.objects_box, self.add_button],
                        layout=W.Layout(flex="1 1 auto", min_width="540px"))
        controls = W.HBox([self.sampler, self.steps, self.guidance, self.seed, self.count], layout=W.Layout(flex_flow="row wrap"))
        prompts = [W.HBox([self.prompt, self.negative_prompt])] if self.text else []
        actions = W.HBox([self.sample_button, self.pick, self.resample, self.edit_button, self.folder, self.save_button], layout=W.Layout(flex_flow="row wrap"))
        self.widget = W.VBox([W.HBox([drawing, editor], layout=W.Layout(flex_flow="row wrap", grid_gap="12px")), controls, *prompts, actions,
                              self.message, self.grid_image])
        self._page_ready = False  # the page has created the canvas: drawing commands have a target
        self.canvas.on_client_ready(lambda: self._guard("redraw", self._page_has_canvas))
        self._redraw()
        if not self.conditional:
            self._say("this model takes no layout: Sample draws unconditional images")

    # --- the mouse (canvas pixels) ------------------------------------------------------------
    def press(self, px: float, py: float) -> None:
        """Mouse down at canvas pixel ``(px, py)``: select and start moving / resizing a box, or start drawing one."""
        self.draft.press(px / CANVAS_PX, py / CANVAS_PX)

    def move_to(self, px: float, py: float) -> None:
        """Mouse move: update the dragged box (nothing when no button is down)."""
        self.draft.move_to(px / CANVAS_PX, py / CANVAS_PX)

    def release(self, px: float, py: float) -> None:
        """Mouse up (or out of the canvas): finish the drag; a drawn box of at least ``MIN_DRAG_PX`` is added."""
        if self.draft.release(px / CANVAS_PX, py / CANVAS_PX, label=self.pen.value or None) == "too small":
            self._say(f"a box needs a drag of at least {MIN_DRAG_PX} px each way: nothing added")

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 4) -> None:
        """A whole mouse drag from ``start`` to ``end`` (canvas pixels), with ``steps`` moves between."""
        self.press(*start)
        for k in range(1, steps + 1):
            self.move_to(start[0] + (end[0] - start[0]) * k / steps, start[1] + (end[1] - start[1]) * k / steps)
        self.release(*end)

    def delete_selected(self) -> None:
        """Remove the selected box (the Delete button)."""
        self.draft.delete_selected()

    @property
    def selected(self) -> int | None:
        """The selected object's index, or None."""
        return self.draft.selected

    # --- the layout (all kept by the draft) -------------------------------------------------------
    def add_object(self, label: str | int, box: Sequence[float] = DEFAULT_BOX) -> int:
        """Add an object; ``label`` is a class name or id (a phrase model: the box's phrase), ``box``
        ``[x, y, w, h]`` (clamped into the canvas). Returns its index. Raises :class:`LayoutError` for
        an unknown label, an empty phrase or a bad box."""
        return self.draft.add(label, box)

    def remove_object(self, i: int) -> None:
        """Remove object ``i`` (negative indices count from the end)."""
        self.draft.remove(i)

    def clear(self) -> None:
        """Remove every object (the empty layout: unconditional samples)."""
        self.draft.clear()

    def objects(self) -> list[dict[str, Any]]:
        """The layout as layout-file objects ``[{"label", "box"}]`` (a phrase model: ``[{"text", "box"}]``)."""
        return self.draft.to_json()

    def layout(self) -> torch.Tensor:
        """The validated layout ``(N, 5)`` of rows ``(x, y, w, h, class)`` (a phrase model: the class
        indexes the layout's distinct phrases, ``draft.layout_and_names()``); raises :class:`LayoutError`."""
        return self.draft.layout()

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
        layout, names = self.draft.layout_and_names()
        n, name, steps = self.count.value, self.sampler.value, self.steps.value
        what = f"{n} image(s), {name}, {steps} steps" + (f", guidance {self.guidance.value:g}" if self.conditional else "")
        self._say(f"sampling {what} for {len(layout)} object(s) ...")
        text = {"prompt": self.prompt.value, "negative_prompt": self.negative_prompt.value or None} if self.text else {}
        with self._busy():
            start = time.perf_counter()
            images, layouts = sample_images(layout if self.conditional else None, n=n, ckpt=self.module, sampler=name, steps=steps,
                                            guidance=self.guidance.value if self.conditional else None, seed=self.seed.value, **text,
                                            **self._phrases(names), **self._sampling_options())
            seconds = time.perf_counter() - start
        self._show(images, layouts, seconds, names)
        empty = " (empty layout: unconditional samples)" if self.conditional and len(layout) == 0 else ""
        self._say(f"sampled {what} in {seconds:.1f} s{empty}")
        return self.images

    def _edit(self) -> torch.Tensor:
        if self.images is None or self.layouts is None:
            what = "re-phrase" if self.phrase_model else "re-label"
            raise UserError(f"nothing to edit yet: press Sample, then move, resize, {what}, add or remove boxes and press Edit")
        k, n, name, steps = self.pick.value, self.count.value, self.sampler.value, self.steps.value
        (old, new), names = common_names([(self.layouts[k], self.names), self.draft.layout_and_names()], text=self.phrase_model)
        old, new = pad_layouts([old, new])
        self._say(f"editing sample {k}: {n} version(s), {name}, {steps} steps ...")
        with self._busy():
            start = time.perf_counter()
            g = torch.Generator(device=self.module.device).manual_seed(self.seed.value)
            images, region = edit_images(self.module, self.images[k : k + 1].expand(n, -1, -1, -1), old[None].expand(n, -1, -1),
                                         new[None].expand(n, -1, -1), sampler=name, steps=steps, guidance=self.guidance.value,
                                         resample=self.resample.value, generator=g, **self._phrases(names))
            seconds = time.perf_counter() - start
        self._show(images, new[None].expand(n, -1, -1), seconds, names)
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

    def _show(self, images: torch.Tensor, layouts: torch.Tensor | None, seconds: float, names: list[str]) -> None:
        """New current samples (``layouts``' classes index ``names``): the grid, the sample to edit under the boxes."""
        self.images, self.layouts, self.stale, self.seconds = images.cpu(), None if layouts is None else layouts.cpu(), False, seconds
        self.names = list(names)
        self.grid_png = png_bytes(grid(self.images, self.layouts, self.names or None))
        self.grid_image.value = self.grid_png
        self.pick.max = len(self.images) - 1
        self.edit_button.disabled = not self.conditional
        self._show_pick()

    def _show_pick(self) -> None:
        """The canvas background: sample ``pick`` (what Edit starts from), nearest-neighbour upscaled."""
        if self.images is None or self.stale:  # a sample of an older layout is not shown under the new boxes
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
        rows, names = self.draft.layout_and_names()
        return save_layout(rows, folder / f"layout_{i:03d}.json", names, text=self.phrase_model)

    def _write_grid(self, folder: Path, i: int) -> Path:
        if self.images is None:
            raise UserError("nothing sampled yet: press Sample first")
        return save_grid(self.images, folder / f"grid_{i:03d}.png", layouts=self.layouts, class_names=self.names or None)

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
    def _phrases(self, names: list[str]) -> dict[str, Any]:
        """``phrases=names`` for a phrase model (what the classes of its layouts index), else nothing."""
        return {"phrases": list(names)} if self.phrase_model else {}

    def _sampling_options(self) -> dict[str, Any]:
        """``device`` / ``dtype`` for :func:`layoutdiffuse.sampling.sample`, only those that were given."""
        return {k: v for k, v in (("device", self.device), ("dtype", self.dtype)) if v is not None}

    def _draft_changed(self, what: Any) -> None:
        """Copy a change of the draft into the widgets, then redraw."""
        self._syncing = True
        try:
            if what == "objects":
                self.rows = [self._make_row(o.label, o.box) for o in self.draft.objects]
                self.objects_box.children = [row.box for row in self.rows]
                self.add_button.disabled = not self.conditional or len(self.rows) >= self.max_objects
            elif isinstance(what, tuple) and what[0] == "box":
                row, box = self.rows[what[1]], self.draft.objects[what[1]].box
                for slider, value in zip(row.sliders(), box):
                    slider.value = value
            elif isinstance(what, tuple) and what[0] == "label":
                self.rows[what[1]].label.value = self.draft.objects[what[1]].label
            if what in ("objects", "selection") or what == ("label", self.draft.selected):
                i = self.draft.selected
                self.delete_button.disabled = i is None
                if i is not None and self.pen.value != self.draft.objects[i].label:
                    self.pen.value = self.draft.objects[i].label  # the pen shows the selected box's class
        finally:
            self._syncing = False
        if what not in ("selection", "preview") and self.images is not None and not self.stale:
            self.stale = True  # the sample no longer shows this layout: clear it from the canvas
            self._background = None
        self._redraw()

    def _make_row(self, label: Any, box: Sequence[float]) -> ObjectRow:
        row = ObjectRow.create(self.class_names, label, box, text=self.phrase_model)
        row.remove.on_click(lambda _: self._guard("remove object", lambda: self.remove_object(self.rows.index(row))))
        row.label.observe(lambda change: self._from_row(row, lambda i: self.draft.set_label(i, change["new"])), names="value")
        for side, slider in zip(SIDES, row.sliders()):
            slider.observe(lambda change, side=side: self._from_row(row, lambda i: self.draft.set_side(i, side, change["new"])), names="value")
        return row

    def _from_row(self, row: ObjectRow, action: Callable[[int], None]) -> None:
        """A widget of ``row`` changed by the user (not by the view's own sync): tell the draft."""
        if not self._syncing and row in self.rows:
            self._guard("layout", lambda: action(self.rows.index(row)))

    def _pen_changed(self) -> None:
        if self._syncing or self.draft.selected is None:
            return
        self.draft.set_label(self.draft.selected, self.pen.value)  # re-label the selected box

    def _page_has_canvas(self) -> None:
        self._page_ready = True
        self._redraw()

    def _redraw(self) -> None:
        """Draw the canvas: the sample to edit (or a dark canvas), the boxes with their labels, the
        selected box with its corner handles, the box being drawn."""
        try:
            layout, names = self.draft.layout_and_names()
        except LayoutError as err:
            self._say(f"invalid layout: {err}", error=True)
            self._layout_error = True
            return
        if self._layout_error:  # the layout is valid again: clear its error
            self._layout_error = False
            self._say("")
        if not self._page_ready:
            # ipycanvas draws through one page-wide queue: a command naming a canvas the page has not
            # created yet (a cell that draws right after displaying, as in "run all") fails there and
            # stops that queue for good -- a blank canvas that still takes drags (issue 27). The page
            # says when it has the canvas (client_ready); until then the draft alone holds the layout.
            return
        c, selected = self.canvas, self.draft.selected
        # name the canvas in every batch: ipycanvas sends "switch canvas" only when its kernel-side
        # memory of the page's current canvas changes, which a reloaded page or a second view forgets
        c._canvas_manager._current_canvas = None
        with hold_canvas(c):
            c.clear()
            if self._background is not None:
                c.put_image_data(self._background, 0, 0)
            else:
                c.fill_style = EMPTY_CANVAS
                c.fill_rect(0, 0, CANVAS_PX, CANVAS_PX)
            c.font = "12px sans-serif"
            for i, (x, y, w, h, cls) in enumerate(layout.tolist()):
                color = PALETTE[int(cls) % len(PALETTE)]
                c.stroke_style, c.fill_style = color, color
                c.line_width = 3 if i == selected else 1.5
                c.stroke_rect(x * CANVAS_PX, y * CANVAS_PX, w * CANVAS_PX, h * CANVAS_PX)
                c.fill_text(names[int(cls)], x * CANVAS_PX + 3, y * CANVAS_PX + 13)
                if i == selected:
                    for cx, cy in ((x, y), (x + w, y), (x, y + h), (x + w, y + h)):
                        c.fill_rect(cx * CANVAS_PX - 3, cy * CANVAS_PX - 3, 6, 6)
            if self.draft.preview is not None:
                x, y, w, h = self.draft.preview
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
