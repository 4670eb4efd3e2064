"""Editing an image by its layout: move, resize, remove, re-label or add objects, re-generate only
what changed.

    import layoutdiffuse
    new = layoutdiffuse.edit(image, layout, new_layout)        # image: (C, H, W) in [-1, 1]
    # -> (n, C, H, W): pixels outside the changed boxes are the original's, exactly

An object is *changed* when its row ``(x, y, w, h, class)`` has no equal (within ``TOLERANCE``) in
the other layout: a moved object is changed in both (its old box must be cleared, its new box
drawn), a removed one only in the old layout, an added one only in the new. The **edit region** is
the union of the pixels covered by the changed boxes (:func:`box_mask`); everything outside it is
kept. Inside it the model samples the *new* layout, conditioned on the kept pixels by masked
sampling (:func:`layoutdiffuse.diffusion.inpaint.masked_sample`: at each step the kept region is
replaced by the forward-noised original, with ``resample`` extra RePaint passes as an option).

For a model that reads a phrase per box (``ckpt="layout-mnist-color"``) the layouts carry
``"text"`` and a box's phrase is part of its row: the class column indexes the phrases of both
layouts (:func:`common_names`), so re-phrasing a box ("make the 7 blue": same box, new phrase) is
an edit of that box, and the model is given each box's phrase (``cond["box_text"]``).

Pixel-space layout models only (the Layout-MNIST models); latent models are not supported yet.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .diffusion.inpaint import masked_sample
from .errors import UserError
from .layout import PAD, pad_layouts
from .nn.phrase_encoder import phrase_words
from .sampling import box_text, layout_and_names, module_for, out_of_memory_as_user_error
from .training.inference import SamplingInterface, evaluating

TOLERANCE = 1e-4  # rows closer than this in every field are the same object
EDGE = 1e-4  # a box edge this close to a pixel boundary does not reach into the next pixel


def box_mask(layouts: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixels covered by the boxes: ``layouts (B, N, 5)`` -> ``(B, 1, H, W)`` bool.

    A pixel is covered when the box overlaps it (edges round outwards, so the whole box is
    inside the mask). Padding rows (class -1) cover nothing.
    """
    x, y, w, h, cls = layouts.unbind(-1)
    valid = cls >= 0

    def span(start: torch.Tensor, size: torch.Tensor, n: int) -> torch.Tensor:  # (B, N, n)
        lo = torch.floor(start * n + EDGE)
        hi = torch.ceil((start + size) * n - EDGE)
        k = torch.arange(n, device=layouts.device)
        return (k >= lo[..., None]) & (k < hi[..., None])

    rows, cols = span(y, h, height), span(x, w, width)
    inside = rows[..., :, None] & cols[..., None, :] & valid[..., None, None]  # (B, N, H, W)
    return inside.any(1, keepdim=True)


def changed_rows(layouts: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """``(B, N)`` True where a valid row of ``layouts (B, N, 5)`` has no equal valid row in ``others (B, M, 5)``."""
    same = ((layouts[:, :, None, :] - others[:, None, :, :]).abs() <= TOLERANCE).all(-1)  # (B, N, M)
    same &= (others[:, None, :, 4] >= 0)
    return (layouts[..., 4] >= 0) & ~same.any(-1)


def edit_region(layouts: torch.Tensor, new_layouts: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The pixels to re-generate ``(B, 1, H, W)`` bool: the boxes of the changed objects of either layout."""
    old = layouts.clone()
    old[..., 4] = torch.where(changed_rows(layouts, new_layouts), layouts[..., 4], torch.full_like(layouts[..., 4], PAD))
    new = new_layouts.clone()
    new[..., 4] = torch.where(changed_rows(new_layouts, layouts), new_layouts[..., 4], torch.full_like(new_layouts[..., 4], PAD))
    return box_mask(old, height, width) | box_mask(new, height, width)


def common_names(layouts: list[tuple[torch.Tensor, list[str]]], text: bool = False) -> tuple[list[torch.Tensor], list[str]]:
    """Layouts each with the names its classes index -> ``(layouts, names)``: the same layouts
    ``(..., 5)`` re-indexed into one list of names (the first layout's names first, then each new one
    in order), so that equal rows mean equal objects. ``text``: the names are phrases, and phrases a
    phrase encoder reads alike (case, spacing) are one name, kept as first written."""
    key = (lambda name: " ".join(phrase_words(name))) if text else (lambda name: name)
    index: dict[str, int] = {}
    names: list[str] = []
    out = []
    for rows, own in layouts:
        ids = []
        for name in own:
            if key(name) not in index:
                index[key(name)] = len(names)
                names.append(name)
            ids.append(index[key(name)])
        rows = rows.clone()
        if len(own):
            classes = rows[..., 4].long()
            valid = classes >= 0
            rows[..., 4] = torch.where(valid, torch.tensor(ids, dtype=rows.dtype)[classes.clamp(min=0)], rows[..., 4])
        out.append(rows)
    return out, names


def edit_condition(module: SamplingInterface, new_layouts: torch.Tensor, phrases: list[str] | None) -> dict[str, Any]:
    """The condition of an edit: ``{"layout": new_layouts (B, N, 5)}``, and for a phrase model each
    image's box phrases (``box_text``) read from ``phrases``, the phrase of each class id."""
    cond: dict[str, Any] = {"layout": new_layouts}
    if module.is_phrase_model:
        if phrases is None:
            raise UserError("this model reads a phrase per box: give phrases=[...], the phrase of each class id of the layouts")
        classes = new_layouts[..., 4]
        if (classes >= len(phrases)).any():
            raise UserError(f"a layout row's class {int(classes.max())} has no phrase: phrases= holds {len(phrases)}")
        cond["box_text"] = box_text(new_layouts, list(phrases))
    elif phrases is not None:
        raise UserError(f"phrases= is for models that read a phrase per box; this one reads the classes {', '.join(module.label_names[:20])}")
    return cond


def check_editable(module: SamplingInterface, images: torch.Tensor) -> None:
    """One clear line when ``module`` cannot edit ``images (B, C, H, W)``."""
    if not module.is_layout_model:
        raise UserError("editing needs a layout model (a LayoutDiffuse checkpoint); this one takes no layout")
    if module.is_latent_model:
        raise UserError("editing supports pixel-space layout models only (e.g. the Layout-MNIST model), not latent models")
    expected = tuple(module.image_shape)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        got = "x".join(map(str, images.shape[-3:] if images.ndim >= 3 else images.shape))
        raise UserError(f"the image is {got} (CxHxW) but the model makes {'x'.join(map(str, expected))} images; edit a raw sample "
                        "(sample --save-images DIR writes them at the model's size, each with its layout file), not a grid")


@torch.no_grad()
def edit_images(module: SamplingInterface, images: torch.Tensor, layouts: torch.Tensor, new_layouts: torch.Tensor,
                sampler: str | None = None, steps: int | None = None, guidance: float | None = None, resample: int = 0,
                generator: torch.Generator | None = None, progress: bool = False, phrases: list[str] | None = None,
                **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Edit a batch: ``images (B, C, H, W)`` in [-1, 1] drawn for ``layouts (B, N, 5)``, re-generated for
    ``new_layouts (B, M, 5)`` (padding rows: class -1). ``phrases``: for a phrase model, the phrase of
    each class id of both layouts (one list: a box re-phrased has another class), e.g. from :func:`common_names`.

    Returns ``(edited (B, C, H, W) in [-1, 1], region (B, 1, H, W) bool)``; outside ``region`` the
    edited images equal ``images`` exactly. Sampler options default to the module's (``sampling_args``);
    ``options`` go to the sampler (e.g. ``eta``). Raises :class:`UserError` when an image has no change.
    """
    check_editable(module, images)
    cond = edit_condition(module, new_layouts.float(), phrases)
    images = images.to(module.device).clamp(-1, 1)
    layouts, new_layouts = layouts.to(module.device).float(), new_layouts.to(module.device).float()
    region = edit_region(layouts, new_layouts, *images.shape[-2:])
    unchanged = ~region.flatten(1).any(1)
    if unchanged.any():
        which = "the new layout" if len(images) == 1 else f"image(s) {unchanged.nonzero().flatten().tolist()}: the new layout"
        what = "re-phrase" if module.is_phrase_model else "re-label"
        raise UserError(f"nothing to edit: {which} has the same objects as the old one (move, resize, {what}, add or remove one)")
    cond["layout"] = new_layouts
    plan = module.prepare_sampling(len(images), cond, sampler=sampler, steps=steps, guidance=guidance, **options)
    with evaluating(plan.model), out_of_memory_as_user_error(len(images), "editing"):
        edited = masked_sample(plan.sampler, plan.model_fn, images.float(), ~region, generator=generator, resample=resample, progress=progress)
    return plan.decode(edited).float().cpu(), region.cpu()


def load_image(path: str | Path, channels: int) -> torch.Tensor:
    """A PNG/JPEG file -> ``(C, H, W)`` in [-1, 1] with ``channels`` 1 (gray) or 3 (RGB)."""
    from torchvision.io import ImageReadMode, decode_image

    from .files import check_readable

    path = check_readable(path, "image")
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        data = decode_image(str(path), mode=mode)
    except RuntimeError as err:
        raise UserError(f"cannot read image {path}: {err}") from err
    return data.float() / (65535 / 2 if data.dtype == torch.uint16 else 127.5) - 1  # 16-bit PNGs span 0-65535


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write ``image (C, H, W)`` in [-1, 1] with its own channels (1 = gray), in the format its suffix
    names (``.png``, ``.jpg``, ...), atomically; parents created."""
    from .files import save_picture

    return save_picture(((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), path)


def edit_file(image: str | Path, layout: Any, new_layout: Any, out: str | Path, n: int = 1, grid: str | Path | None = None,
              **options: Any) -> list[Path]:
    """What ``python -m layoutdiffuse edit`` does: edit the image file, write ``out`` (``n = 1``) or
    ``out``'s stem ``_000.png ...`` (``n > 1``), and with ``grid`` a picture of the original and the
    edits with their layouts drawn. ``options``: those of :func:`edit`. Returns the paths written."""
    from .files import check_output_path
    from .schema import MAX_BATCH, check_sampling_options
    from .visualize import save_grid

    check_sampling_options(n=n, max_n=MAX_BATCH, **{k: options.get(k) for k in ("seed", "guidance", "steps", "resample")})
    out = Path(out)
    outs = [out] if n == 1 else [out.with_name(f"{out.stem}_{i:03d}{out.suffix}") for i in range(n)]
    for path in outs + ([Path(grid)] if grid is not None else []):  # before any sampling
        check_output_path(path, "--out" if path != grid else "--grid")
    module = module_for(options.pop("ckpt", None), options.pop("device", None), options.pop("dtype", None))
    original = load_image(image, module.image_shape[0])
    edited = edit(original, layout, new_layout, ckpt=module, n=n, **options)
    paths = [save_image(x, path) for x, path in zip(edited, outs)]
    if grid is not None:
        old, new, names = edit_layouts(module, layout, new_layout, options.get("phrases"))
        layouts = torch.cat([old[None], new[None].expand(n, -1, -1)])
        paths.append(save_grid(torch.cat([original[None], edited.cpu()]), grid, layouts=layouts, class_names=names, nrow=n + 1))
    return paths


def edit_layouts(module: SamplingInterface, layout: Any, new_layout: Any, phrases: list[str] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The old and new layout of an edit for ``module`` (each as for :func:`layoutdiffuse.sample`;
    ``phrases``: those of tensors for a phrase model) -> ``(old (N, 5), new (N, 5), names)``, padded
    to one length, their classes indexing ``names`` (the model's classes, or both layouts' phrases)."""
    pairs = [layout_and_names(module, x, phrases) for x in (layout, new_layout)]
    for (rows, _), which in zip(pairs, ("layout", "new_layout")):
        if rows.ndim != 2:
            raise UserError(f"{which} must be one layout (N, 5) for one image, got a batch {tuple(rows.shape)}; "
                            "for a batch use layoutdiffuse.editing.edit_images")
    (old, new), names = common_names(pairs, text=module.is_phrase_model)
    old, new = pad_layouts([old, new]).unbind(0)
    return old, new, names


def edit(image: Any, layout: Any, new_layout: Any, ckpt: str | Path | SamplingInterface | None = None, n: int = 1,
         sampler: str | None = None, steps: int | None = None, guidance: float | None = None, resample: int = 0,
         seed: int = 0, progress: bool = False, batch_size: int | None = None, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, phrases: list[str] | None = None) -> torch.Tensor:
    """Re-generate what changed between ``layout`` and ``new_layout`` in ``image``; ``n`` versions.

    ``image``: ``(C, H, W)`` or ``(1, C, H, W)`` in [-1, 1], or an image file. ``layout`` /
    ``new_layout``: a layout file, ``{"label", "box"}`` objects or an ``(N, 5)`` tensor (as for
    :func:`layoutdiffuse.sample`); for a phrase model (``ckpt="layout-mnist-color"``) ``{"text", "box"}``
    objects (re-phrasing a box is an edit of it), or tensors whose class ids index ``phrases``.
    ``ckpt``: default the shipped Layout-MNIST model.
    ``batch_size``: versions re-generated per model call (default all ``n`` at once; version ``i`` is the
    same whatever the batch size only when it is ``n``, as the batch shares one generator).
    ``device`` / ``dtype``: as for :func:`layoutdiffuse.sample`.
    Returns ``(n, C, H, W)`` in [-1, 1], float32 on the CPU; pixels outside the changed boxes are the original's.
    """
    from .schema import MAX_BATCH, check_image_values, check_integer, check_sampling_options

    check_sampling_options(n=n, seed=seed, guidance=guidance, steps=steps, resample=resample, max_n=MAX_BATCH)
    if not isinstance(progress, bool):
        raise UserError(f"progress must be true or false, got {type(progress).__name__}")
    if batch_size is not None:
        check_integer(batch_size, "batch_size", 1)
    module = module_for(ckpt, device, dtype)
    if isinstance(image, (str, Path)):
        image = load_image(image, module.image_shape[0])
    if not isinstance(image, torch.Tensor):
        raise UserError(f"image must be a tensor (C, H, W) in [-1, 1] or an image file, got {type(image).__name__}")
    check_image_values(image)
    images = image[None] if image.ndim == 3 else image
    if images.ndim == 4 and len(images) != 1:
        raise UserError(f"edit takes one image (C, H, W); for a batch use layoutdiffuse.editing.edit_images, got {tuple(image.shape)}")
    check_editable(module, images)
    old, new, names = edit_layouts(module, layout, new_layout, phrases)
    g = torch.Generator(device=module.device).manual_seed(seed)
    chunks = []
    for i in range(0, n, batch_size or n):
        size = min(batch_size or n, n - i)
        expand = lambda t: t[None].expand(size, *t.shape)  # noqa: E731
        edited, _ = edit_images(module, images.expand(size, -1, -1, -1), expand(old), expand(new), sampler, steps, guidance, resample,
                                g, progress, phrases=names if module.is_phrase_model else None)
        chunks.append(edited)
    return torch.cat(chunks)
