"""Sampling in one line::

    images, layouts = layoutdiffuse.sample(layout=[{"label": "7", "box": [0.1, 0.1, 0.5, 0.8]}], n=8)

The default checkpoint is the shipped Layout-MNIST LayoutDiffuse model
(``layoutdiffuse/weights/layout_mnist.safetensors``). Every batched draw in the package (this
one-liner, ``evaluate``, the benchmarks, the notebooks) goes through :func:`sample_batched`, whose
seeding rule is one for all: the batch that starts at image ``i`` uses a generator seeded
``seed + i``, so a draw does not depend on what ran before, and the same ``seed`` and batch size
give the same images.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from .diffusion.guidance import class_labels
from .layout import validate_layout
from .layout_file import load_layout, parse_layout
from .errors import UserError, MissingFileError
from .training.inference import SamplingInterface

from .shipped import SHIPPED_MODEL, SHIPPED_MODELS, checkpoint_path  # noqa: F401 (the shipped models, by name)


def load_model(ckpt: str | Path | None = None, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto") -> SamplingInterface:
    """A ready-to-sample module of its own (callers may move or change it); ``ckpt``: a path, a shipped
    model's name (:data:`SHIPPED_MODELS`) or ``None`` (the shipped grey Layout-MNIST model). ``device`` / ``dtype``: see :mod:`layoutdiffuse.devices` (``auto``: the GPU when
    there is one, half precision for latent models on CUDA, float32 otherwise). Loaded only to sample
    (:func:`~layoutdiffuse.factory.load_checkpoint` ``sampling_only=True``): a
    :class:`~layoutdiffuse.training.sampling_module.SamplingModule`, without Lightning, where it samples as
    the training module would; :func:`~layoutdiffuse.factory.load_checkpoint` gives the training module."""
    from .factory import load_checkpoint

    from .files import check_readable

    if ckpt is not None and not isinstance(ckpt, (str, Path)):
        raise UserError(f"ckpt must be a checkpoint path, a shipped model's name ({', '.join(SHIPPED_MODELS)}) or a loaded module, "
                        f"got {type(ckpt).__name__}")
    path = checkpoint_path(ckpt)
    if not path.exists():
        shipped = ckpt is None or ckpt in SHIPPED_MODELS
        hint = " (the shipped model is missing from this install)" if shipped else f" (shipped models by name: {', '.join(SHIPPED_MODELS)})"
        raise MissingFileError(f"checkpoint {path} does not exist{hint}")
    return load_checkpoint(check_readable(path, "checkpoint"), device=device, dtype=dtype, sampling_only=True)


def module_for(ckpt: str | Path | SamplingInterface | None, device: str | torch.device | None,
               dtype: str | torch.dtype | None) -> SamplingInterface:
    """``ckpt`` loaded (:func:`load_model`; ``None`` device / dtype = ``auto``), or a module given, moved
    to ``device`` / ``dtype`` when they are given (``None``: left where it is)."""
    if not isinstance(ckpt, SamplingInterface):  # a training module or a SamplingModule
        return load_model(ckpt, device or "auto", dtype or "auto")
    if device is None and dtype is None:
        return ckpt
    from .devices import resolve

    found, precision = resolve(device or ckpt.device, dtype or ckpt.model_dtype, ckpt.is_latent_model)
    return ckpt.to_inference(found, precision)


@contextlib.contextmanager
def out_of_memory_as_user_error(batch_size: int, what: str = "sampling") -> Iterator[None]:
    """A GPU out-of-memory inside the block becomes one line naming the batch size tried and what to lower."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise UserError(f"out of GPU memory while {what} a batch of {batch_size}; lower the batch size (--batch-size / "
                        "batch_size=), or use --dtype bfloat16 / float16, or a smaller image size") from None


def check_conditions(module: SamplingInterface, layout: Any = None, mask: Any = None, prompt: str | None = None,
                     negative_prompt: str | None = None) -> None:
    """One line, before anything is sampled, when the conditions given do not fit ``module``: boxes
    for a mask model, a mask for a box model, text for a model without a text encoder, or a
    text-conditioned UNet that has no text encoder (converted without its foundation)."""
    if module.is_mask_model:
        if layout is not None and (not isinstance(layout, (list, tuple, torch.Tensor)) or len(layout)):
            raise UserError(f"this model reads {module.model.adaptor.num_classes}-part masks, not box layouts; "
                            "give --mask MASK.png (a PNG of part ids; mask= in Python)")
    elif mask is not None:
        raise UserError("this model reads box layouts, not masks; give --layout LAYOUT.json (layout= in Python)"
                        if module.is_layout_model else "this model reads no mask; sample it without one")
    if module.lacks_text_encoder:
        from .release.hints import foundation_hint

        release = module.config.get("release") or {}
        foundation = foundation_hint(release["model_args"]) if "model_args" in release else "the foundation it was trained from"
        raise UserError(f"this model reads text but holds no text encoder (its UNet was converted without its foundation), so it "
                        f"cannot sample; fetch {foundation} and convert again: layoutdiffuse convert-release "
                        f"{release.get('checkpoint', 'CKPT')} --release-config CONFIG --foundation FOLDER --out OUT.safetensors")
    if (prompt is not None or negative_prompt is not None) and not module.is_text_model:
        raise UserError("--prompt / --negative-prompt need a model with a text encoder (a text foundation); this one reads no "
                        "text: leave them out")


def as_layout(layout: Any, class_names: list[str]) -> torch.Tensor:
    """A layout given as ``None``, a path, JSON objects or a tensor -> validated ``(N, 5)``
    (a tensor may also be a batch ``(B, N, 5)``, one layout per image)."""
    if layout is None:
        return torch.zeros(0, 5)
    if isinstance(layout, (str, Path)):
        return load_layout(layout, class_names)
    if isinstance(layout, torch.Tensor):
        if layout.is_complex() or layout.dtype == torch.bool:
            raise UserError(f"a layout tensor holds real numbers (rows x, y, w, h, class), got dtype {layout.dtype}")
        return validate_layout(layout.float(), len(class_names))
    return parse_layout(layout, class_names)


def layout_and_names(module: SamplingInterface, layout: Any, phrases: Any = None) -> tuple[torch.Tensor, list[str]]:
    """A layout for ``module`` as ``(rows (N, 5) or (B, N, 5), names)``: each row's class indexes
    ``names``, the model's class names, or for a phrase model the phrases of the layout (objects'
    ``"text"``, or labels read as text; a tensor's classes index ``phrases``)."""
    if not module.is_phrase_model:
        if phrases is not None:
            raise UserError(f"phrases= is for models that read a phrase per box; this one reads the classes {', '.join(module.label_names[:20])}")
        return as_layout(layout, module.label_names), module.label_names
    from .layout_file import load_phrase_layout, parse_phrase_layout

    if layout is None:
        return torch.zeros(0, 5), []
    if isinstance(layout, (str, Path)):
        return load_phrase_layout(layout)
    if isinstance(layout, torch.Tensor):
        if phrases is None or not isinstance(phrases, (list, tuple)) or not all(isinstance(p, str) and p.strip() for p in phrases):
            raise UserError("a layout tensor for a phrase model needs phrases=[...]: the phrase of each class id in its last column")
        return as_layout(layout, list(phrases)), list(phrases)
    return parse_phrase_layout(layout)


def box_text(layouts: torch.Tensor, names: list[str]) -> list[list[str]]:
    """``layouts (B, N, 5)`` whose classes index ``names`` -> ``cond["box_text"]``: per image the names of its real rows."""
    return [[names[int(c)] for c in row[:, 4].tolist() if c >= 0] for row in layouts]


def sample_batched(module: SamplingInterface, n: int, layouts: torch.Tensor | None = None, seed: int = 0,
                   batch_size: int = 250, progress: bool = False, prompt: str | None = None, masks: torch.Tensor | None = None,
                   phrases: list[str] | None = None, **sampling: Any) -> torch.Tensor:
    """``n`` samples ``(n, C, H, W)`` in [-1, 1], float32 on the CPU, drawn ``batch_size`` at a time.

    ``layouts``: ``(n, N, 5)`` box layouts (row ``i`` conditions image ``i``) or ``None``
    (unconditional; a class-conditional model draws image ``i`` of class ``i % num_classes``). The batch starting at image ``i`` draws from a generator seeded ``seed + i``,
    so a draw does not depend on what ran before (images inside one batch share its generator, so
    the images after a batch's first one change with the batch size). ``prompt``: the caption of
    every sample (text foundations). ``masks``: ``(n, H, W)`` part-id masks of a mask model instead of
    ``layouts``. ``phrases``: for a phrase model, the phrase of each class id of ``layouts``. ``sampling``: ``sampler``, ``steps``, ``guidance``,
    ``negative_prompt``, ... (``None`` = the module's setting).
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if layouts is not None and len(layouts) != n:
        raise UserError(f"got {len(layouts)} layouts for {n} samples; give one layout per sample")
    opts = {k: v for k, v in sampling.items() if v is not None}
    chunks = []
    for i in range(0, n, batch_size):
        size = min(batch_size, n - i)
        g = torch.Generator(device=module.device).manual_seed(seed + i)
        cond = None if layouts is None else {"layout": layouts[i : i + size].to(module.device)}
        if cond is not None and module.is_phrase_model:
            cond["box_text"] = box_text(layouts[i : i + size], phrases or [])
        if masks is not None:
            cond = {"mask": masks[i : i + size].to(module.device)}
        if cond is None and module.label_classes:  # image j of the draw: class j % label_classes
            cond = {"label": class_labels(size, module.label_classes, start=i)["label"].to(module.device)}
        if prompt is not None:
            cond = {**(cond or {}), "caption": [prompt] * size}
        with out_of_memory_as_user_error(size):
            chunks.append(module.sample(size, cond=cond, generator=g, progress=progress, **opts).float().cpu())
    return torch.cat(chunks)


def timed_samples(module: SamplingInterface, n: int, sampler: str | None = None, steps: int | None = None, seed: int = 0,
                  batch_size: int = 250, guidance: float | None = None) -> tuple[torch.Tensor, float]:
    """:func:`sample_batched` with no layout (a class-conditional model: image ``i`` of class
    ``i % num_classes``) and the wall seconds it took (the GPU synchronised)."""
    start = time.perf_counter()
    images = sample_batched(module, n, seed=seed, batch_size=batch_size, sampler=sampler, steps=steps, guidance=guidance)
    if module.device.type == "cuda":
        torch.cuda.synchronize()
    return images, time.perf_counter() - start


#: images per model call in :func:`sample`
BATCH_SIZE = 64


def sample(
    layout: Any = None,
    n: int | None = None,
    ckpt: str | Path | SamplingInterface | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    progress: bool = False,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    batch_size: int = BATCH_SIZE,
    mask: Any = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    phrases: list[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draw ``n`` images for one layout (default 8), or one image per layout of a batch.
    Returns ``(images (n, C, H, W) in [-1, 1], layouts (n, N, 5) or None)``.

    ``layout``: ``None`` / ``[]`` (unconditional: the empty layout), a layout file path, a list of
    ``{"label", "box"}`` objects, a tensor ``(N, 5)``, or a batch ``(B, N, 5)`` (then ``n`` is ``B``).
    A phrase model (``ckpt="layout-mnist-color"``) takes ``{"text": "a red seven", "box"}`` objects (a
    label is read as its text), or a tensor whose class ids index ``phrases``; the layouts returned
    then index the layout's distinct phrases (:func:`layout_and_names` gives them).
    A class-conditional model (the MNIST toy) takes no layout and draws image ``i`` of class
    ``i % num_classes``, guided by ``guidance``.
    Unset sampler options use the model's defaults. Images are drawn ``batch_size`` at a time
    (:func:`sample_batched`, with its seeding rule), so any ``n`` fits in memory.
    ``prompt`` / ``negative_prompt``: the caption and the unconditional branch's text, for models
    with a text encoder (Stable Diffusion foundations, e.g. a converted release checkpoint).
    ``mask``: for mask models (e.g. a converted ``celeb_mask``) instead of ``layout``: a PNG of part
    ids or a tensor ``(H, W)`` / ``(B, H, W)`` (:func:`layoutdiffuse.mask_file.as_mask`); ``None`` = the empty mask.
    ``device`` / ``dtype``: where and in which precision the model runs (:mod:`layoutdiffuse.devices`;
    default ``auto`` for a checkpoint loaded here; a module given stays where it is unless they are
    given, and is then moved). Images come back float32 on the CPU, layouts on the CPU.
    """
    from .schema import check_integer, check_sampling_options

    check_sampling_options(n=n, seed=seed, guidance=guidance, steps=steps)
    check_integer(batch_size, "batch_size", 1)
    module = module_for(ckpt, device, dtype)
    check_conditions(module, layout, mask, prompt, negative_prompt)
    opts = dict(sampler=sampler, steps=steps, seed=seed, progress=progress)
    if prompt is not None or negative_prompt is not None:
        opts.update(prompt=prompt, negative_prompt=negative_prompt)
    if module.is_mask_model:
        from .mask_file import as_mask

        size = module.config.get("data", {}).get("image_size", module.image_shape[-1])
        masks = None if mask is None else as_mask(mask, module.model.adaptor.num_classes, size).to(module.device)
        if masks is not None and masks.ndim == 2:
            masks = masks[None].expand(8 if n is None else int(n), -1, -1)
        elif masks is not None and n is not None and n != len(masks):
            raise UserError(f"a batch of {len(masks)} masks draws one image per mask: leave n unset or pass n={len(masks)}, got n={n}")
        count = len(masks) if masks is not None else 8 if n is None else int(n)
        return sample_batched(module, count, masks=masks, guidance=guidance, batch_size=batch_size, **opts), None
    if not module.is_layout_model:
        if layout is not None and (not isinstance(layout, (list, tuple, torch.Tensor)) or len(layout)):
            raise UserError("this checkpoint is not a layout model; sample it without a layout")
        if module.label_classes:  # class-conditional: image i of class i % label_classes
            opts["guidance"] = guidance
        elif guidance is not None and guidance != 1:
            raise UserError(f"guidance {guidance:g} needs a conditional model; this checkpoint is unconditional (leave guidance unset)")
        return sample_batched(module, 8 if n is None else int(n), batch_size=batch_size, **opts), None
    rows, names = layout_and_names(module, layout, phrases)
    if rows.ndim == 3:
        if n is not None and n != len(rows):
            raise UserError(f"a batch of {len(rows)} layouts draws one image per layout: leave n unset or pass n={len(rows)}, got n={n}")
        layouts = rows
    else:
        layouts = rows[None].expand(8 if n is None else int(n), -1, -1)
    if module.is_phrase_model:
        opts["phrases"] = names
    return sample_batched(module, len(layouts), layouts, guidance=guidance, batch_size=batch_size, **opts), layouts
