"""The condition protocol: one table of the kinds of condition a model can be given.

A condition is a dict ``{kind: batch value}``, e.g. ``{"layout": (B, N, 5), "caption": [B str]}``.
Everything outside the models that handles conditions reads :data:`CONDITIONS`:

* ``null(value)`` -- the unconditional value of a batch (classifier-free guidance's second branch);
* ``drop(value, drop)`` -- the items where ``drop: (B,) bool`` is set replaced by their null value
  (condition dropout in training);
* ``cat(values)`` -- batches concatenated (both guidance branches in one forward);
* ``collate(values)`` -- the values of single samples as a batch (the data loader);
* ``check(value, batch, classes)`` -- the value's format, batch size and (when the model declares
  it) class range; run once at the boundary (:func:`collate`, and the model functions of
  :mod:`~layoutdiffuse.diffusion.guidance` that sampling and training build), so the models trust
  what they are given.

A new kind (e.g. ``box_text``, a phrase per box) is one :func:`register_condition` call; guidance, dropout, batching
and validation then handle it. A key the table does not hold is refused, never passed on silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import default_collate

from .errors import UserError
from .layout import IGNORE, PAD, LayoutError, cat_layouts, pad_layouts, validate_layout


@dataclass(frozen=True)
class ConditionKind:
    """How one condition key behaves outside the model (see the module docstring)."""

    name: str
    null: Callable[[Any], Any]
    drop: Callable[[Any, torch.Tensor], Any]
    cat: Callable[[Sequence[Any]], Any]
    collate: Callable[[list[Any]], Any]
    check: Callable[[Any, int, int | None], None]
    size: Callable[[Any], int] = len


#: the condition kinds by name
CONDITIONS: dict[str, ConditionKind] = {}


def register_condition(kind: ConditionKind) -> ConditionKind:
    """Add ``kind`` to :data:`CONDITIONS` (a name is registered once)."""
    if kind.name in CONDITIONS:
        raise KeyError(f"condition kind '{kind.name}' is registered twice")
    CONDITIONS[kind.name] = kind
    return kind


def condition_kind(key: str) -> ConditionKind:
    """The kind of condition key ``key``, or a :class:`UserError` naming the known kinds."""
    if key not in CONDITIONS:
        raise UserError(f"unknown condition '{key}'; the condition kinds are: {', '.join(CONDITIONS)} "
                        "(layoutdiffuse.conditions.register_condition adds one)")
    return CONDITIONS[key]


def per_item(drop: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``drop: (B,)`` shaped to broadcast over ``value: (B, ...)``."""
    return drop.to(value.device).view(-1, *([1] * (value.ndim - 1)))


def fill_kind(name: str, fill: float, check: Callable[[Any, int, int | None], None]) -> ConditionKind:
    """A tensor condition ``(B, ...)`` whose null value is ``fill`` everywhere; batched by
    concatenation and stacking."""
    return ConditionKind(
        name,
        null=lambda v: torch.full_like(v, fill),
        drop=lambda v, drop: torch.where(per_item(drop, v), torch.full_like(v, fill), v),
        cat=lambda vs: torch.cat(list(vs), dim=0),
        collate=lambda vs: torch.stack([torch.as_tensor(v) for v in vs]),
        check=check,
    )


def _integer(value: torch.Tensor) -> bool:
    return not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)


def _tensor(value: Any, key: str, ndim: int, batch: int, shape: str, integer: bool) -> torch.Tensor:
    ok = isinstance(value, torch.Tensor) and value.ndim == ndim and value.shape[0] == batch and (_integer(value) or not integer)
    if not ok:
        given = f"{value.dtype} of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise UserError(f"cond['{key}'] must be {'an integer' if integer else 'a'} tensor of shape {shape} with B = {batch}, "
                        f"got {given}")
    return value


# --- the kinds -----------------------------------------------------------------------------------

def _check_layout(value: Any, batch: int, classes: int | None) -> None:
    if not isinstance(value, torch.Tensor) or value.ndim != 3 or value.shape[0] != batch:
        given = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise LayoutError(f"layout must be a tensor of shape ({batch}, N, 5) for a batch of {batch}, got {given}")
    validate_layout(value, classes)


def _drop_layout(value: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """A dropped box layout keeps its shape, every row marked padding."""
    out = value.clone()
    out[..., 4] = torch.where(drop.to(value.device)[:, None], torch.full_like(value[..., 4], PAD), value[..., 4])
    return out


def _check_mask(value: Any, batch: int, classes: int | None) -> None:
    mask = _tensor(value, "mask", 3, batch, "(B, H, W)", integer=True)
    bad = (mask < 0) | ((mask >= (IGNORE if classes is None else classes)) & (mask != IGNORE))
    if bool(bad.any()):
        given = sorted(set(mask[bad].tolist()))[:10]
        limit = "" if classes is None else f" in [0, {classes})"
        raise LayoutError(f"mask layout has class ids {given}; allowed: class ids{limit or ' >= 0'}, or {IGNORE} (ignore)")


def _check_caption(value: Any, batch: int, classes: int | None) -> None:
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
        raise UserError(f"cond['caption'] must be a list of strings, got {type(value).__name__}")
    if len(value) != batch:
        raise UserError(f"{len(value)} captions for a batch of {batch}")


def _check_label(value: Any, batch: int, classes: int | None) -> None:
    labels = value
    if not isinstance(labels, torch.Tensor) or labels.shape != (batch,) or not _integer(labels):
        given = f"{labels.dtype} of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise UserError(f"cond['label'] must be {batch} integers (one per image), got {given}")
    bad = (labels < -1) | (labels >= classes if classes is not None else torch.zeros_like(labels, dtype=torch.bool))
    if bool(bad.any()):
        allowed = f"0..{classes - 1}, or -1" if classes is not None else "integers >= -1"
        raise UserError(f"class label {int(labels[bad][0])} out of range: labels are {allowed} for no class")


def _check_context(value: Any, batch: int, classes: int | None) -> None:
    _tensor(value, "context", 3, batch, "(B, S, D)", integer=False)


#: longest phrase of a box, in characters (a layout file's phrases are short; anything longer is not one)
MAX_PHRASE_CHARS = 200


def _check_box_text(value: Any, batch: int, classes: int | None) -> None:
    """``box_text``: ``B`` lists of phrases, one per real (non-padding) row of that image's layout, in row order."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, (list, tuple)) for t in value):
        raise UserError(f"cond['box_text'] must be a list of {batch} lists of phrases (one per box), got {type(value).__name__}")
    if len(value) != batch:
        raise UserError(f"{len(value)} lists of box phrases for a batch of {batch}")
    for i, texts in enumerate(value):
        for j, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"image {i}, box {j}: a box's phrase must be a non-empty string, got {text!r}"[:300])
            if len(text) > MAX_PHRASE_CHARS:
                raise UserError(f"image {i}, box {j}: a box's phrase holds at most {MAX_PHRASE_CHARS} characters, got {len(text)} "
                                f"({text[:40]!r}...)")


register_condition(ConditionKind(
    "layout", null=lambda v: v.new_zeros(v.shape[0], 0, 5), drop=_drop_layout, cat=cat_layouts, collate=pad_layouts,
    check=_check_layout))
register_condition(fill_kind("mask", IGNORE, _check_mask))
register_condition(ConditionKind(
    "caption", null=lambda v: [""] * len(v), drop=lambda v, drop: ["" if d else c for d, c in zip(drop.tolist(), v)],
    cat=lambda vs: [c for v in vs for c in v], collate=list, check=_check_caption))
register_condition(fill_kind("label", -1, _check_label))
register_condition(ConditionKind(  # a phrase per box (text models); rows of a dropped or null layout have none
    "box_text", null=lambda v: [[] for _ in v], drop=lambda v, drop: [[] if d else list(t) for d, t in zip(drop.tolist(), v)],
    cat=lambda vs: [list(t) for v in vs for t in v], collate=lambda vs: [list(t) for t in vs], check=_check_box_text))
register_condition(fill_kind("context", 0.0, _check_context))  # text-encoder states (B, S, D); null: zeros


# --- the operations --------------------------------------------------------------------------------

def batch_size(cond: Mapping[str, Any]) -> int:
    """The batch size of a non-empty condition (its first key's)."""
    key = next(iter(cond))
    return condition_kind(key).size(cond[key])


def check_condition(cond: Mapping[str, Any] | None, batch: int | None = None, classes: Mapping[str, int] | None = None) -> None:
    """Check every value of ``cond`` (one batch size for all; ``batch`` when given); ``classes``
    maps kinds to the number of classes a model has for them (``model.condition_classes``)."""
    if not cond:
        return
    if not isinstance(cond, Mapping):
        raise UserError(f"a condition must be a dict of {', '.join(CONDITIONS)}, got {type(cond).__name__}")
    if batch is None:
        batch = batch_size(cond)
    for key, value in cond.items():
        condition_kind(key).check(value, batch, (classes or {}).get(key))


def model_classes(model: Any) -> dict[str, int]:
    """The class counts a model declares per condition kind (``condition_classes``; none: ``{}``)."""
    return dict(getattr(model, "condition_classes", None) or {})


def null_condition(cond: Mapping[str, Any]) -> dict[str, Any]:
    """The unconditional version of ``cond``: empty layouts (and no box phrases), all-ignore masks, empty captions, class -1, ..."""
    return {key: condition_kind(key).null(value) for key, value in cond.items()}


def drop_condition(cond: Mapping[str, Any], p: float, generator: torch.Generator | None = None) -> dict[str, Any]:
    """Replace each sample's condition by the null condition with probability ``p`` (CFG training);
    every key of a sample is dropped together.

    A dropped box layout keeps its shape with every row marked padding (class -1); a dropped class
    label becomes -1 (no class).
    """
    tensors = [v for v in cond.values() if isinstance(v, torch.Tensor)]
    device = tensors[0].device if tensors else None
    drop = torch.rand(batch_size(cond), generator=generator, device=generator.device if generator is not None else device) < p
    return {key: condition_kind(key).drop(value, drop) for key, value in cond.items()}


def cat_conditions(conds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Conditions with the same keys concatenated along the batch (layouts padded to a common N)."""
    return {key: condition_kind(key).cat([c[key] for c in conds]) for key in conds[0]}


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch layout samples: every condition key by its kind (``layout`` padded to ``(B, N, 5)``,
    captions as a list, ...) and checked; the other keys (``image``, ...) by ``default_collate``."""
    batch = default_collate([{k: v for k, v in s.items() if k not in CONDITIONS} for s in samples])
    cond = {key: CONDITIONS[key].collate([s[key] for s in samples]) for key in samples[0] if key in CONDITIONS}
    check_condition(cond, len(samples))
    return {**batch, **cond}
