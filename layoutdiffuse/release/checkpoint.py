"""Reading a release ``.ckpt`` without executing code from it.

The original LayoutDiffuse release saved Lightning checkpoints (``torch.save`` of a dict with
``state_dict``, ``epoch``, ...). :func:`read_release_state_dict` reads them with
``torch.load(weights_only=True)``: tensor storages and plain containers only. A checkpoint that also
pickles other objects (Lightning / omegaconf hyper-parameter containers, numpy scalars, ...) is read
again by the same restricted unpickler, each such class replaced by an inert stand-in that is never
executed (its construction and ``__setstate__`` do nothing); anything outside those data-only
libraries (``os.system``, ``builtins.eval``, an unknown class) is refused, by name, and nothing is read.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import UserError

log = logging.getLogger(__name__)

#: modules whose pickled classes are data containers in Lightning checkpoints; they are read as
#: inert stand-ins (never constructed for real). Everything else outside tensors and plain
#: containers is refused.
INERT_MODULES = ("omegaconf.", "argparse.", "pytorch_lightning.", "lightning.", "lightning_fabric.", "pathlib.",
                 "collections.", "numpy.", "typing.")


def _inert(name: str) -> type:
    module, _, qual = name.rpartition(".")
    return type(qual, (), {"__module__": module, "__qualname__": qual, "__init__": lambda self, *a, **k: None,
                           "__setstate__": lambda self, state: None, "__call__": lambda self, *a, **k: None})


def read_checkpoint_dict(path: str | Path) -> dict:
    """The object of a release ``.ckpt``, read by the restricted unpickler (see the module docstring)."""
    from ..files import check_readable

    path = check_readable(path, "release checkpoint")
    import torch.serialization as ser

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as first:  # not only plain data: find out what else it pickles
        try:
            names = ser.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as err:
            raise UserError(f"{path} is not a readable torch checkpoint (corrupted or incomplete download?): {err}") from err
        if not names:
            raise UserError(f"{path} is not a readable torch checkpoint: {first}".splitlines()[0]) from first
        refused = [n for n in names if not n.startswith(INERT_MODULES)]
        if refused:
            raise UserError(f"{path}: refused to unpickle {refused} (a release checkpoint holds tensors and plain data; "
                            f"these could run code); allowed besides tensors: inert stand-ins for classes of "
                            f"{', '.join(m.rstrip('.') for m in INERT_MODULES)}") from None
        log.warning("%s pickles %s besides tensors: read as inert stand-ins (never executed)", path, names)
        with ser.safe_globals([_inert(n) for n in names]):
            try:
                return torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as err:
                raise UserError(f"{path} could not be read with tensors and plain data only: {err}".splitlines()[0]) from err


def read_release_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """``state_dict`` of a release ``.ckpt`` (or a bare state dict), every value a tensor."""
    ckpt = read_checkpoint_dict(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise UserError(f"{path} holds no state dict (expected a Lightning checkpoint with 'state_dict')")
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise UserError(f"{path}: state_dict entries that are not tensors: {odd[:10]}")
    return state
