"""Writing files so that nothing is lost: atomic replacement with ordinary permissions.

Every file this package writes that a later run reads back (Lightning checkpoints, weight exports,
the latent cache) goes through :func:`atomic_path`: the bytes are written to a temporary file
*beside* the target (same folder, so the same file system), flushed to disk with ``fsync``, and
renamed over the target. A reader -- or a run killed half way, or a full disk -- sees the old file
or the whole new one, never a torn write.
"""
from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from .errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class WriteError(UserError, OSError):
    """A file could not be written (full disk, read-only file system, no permission, not a folder)."""


def write_error(path: Path, err: OSError, kept: bool) -> WriteError:
    """One line naming the file, the reason, and whether the previous version survives."""
    reason = err.strerror or str(err)
    if err.errno in DISK_FULL:
        reason = f"no space left on the file system of {path.parent}"
    elif err.errno == errno.EROFS:
        reason = f"{path.parent} is on a read-only file system"
    elif err.errno in (errno.EACCES, errno.EPERM):
        reason = f"no permission to write in {path.parent}"
    kept_note = f"; the previous {path.name} is kept unchanged" if kept else ""
    return WriteError(f"cannot write {path}: {reason}{kept_note}")


def fsync_dir(folder: Path) -> None:
    """Persist a rename: fsync the folder entry (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    The new file gets the mode an ordinary new file would have (``0666`` minus the umask), whatever
    the writer used. Any ``OSError`` (full disk, read-only file system, ...) becomes one
    :class:`WriteError` line; the temporary file is removed and a previous ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    kept = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o666))  # the mode a new file gets here
        mode = tmp.stat().st_mode & 0o777
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        if isinstance(err, UserError):
            raise
        raise write_error(path, err, kept) from err
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` as safetensors, atomically (see :func:`atomic_path`).

    safetensors creates files readable by the owner only (mode 0600); the result gets the mode an
    ordinary new file would have, so colleagues on a shared machine can load exported weights.
    """
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_path`).

    torch's zip writer reports a failed write (a full disk) as a ``RuntimeError`` about stream
    positions; writing through a Python file keeps the ``OSError`` underneath, which is raised instead.
    """
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as err:
            cause = err.__context__
            while cause is not None and not isinstance(cause, OSError):
                cause = cause.__context__
            if cause is None:
                raise
            raise cause from None
    return Path(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on every file system: each checkpoint is written
    beside its final name, fsynced and renamed (Lightning's own writer may stage the file elsewhere
    and copy it, which a full disk leaves torn under the final name). Local paths only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        save_torch(checkpoint, path)
