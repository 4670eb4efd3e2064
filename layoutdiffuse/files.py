"""Writing files so that nothing is lost: atomic replacement with ordinary permissions."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` as safetensors, atomically.

    The file is written beside ``path`` under a temporary name and renamed over it, so a reader
    sees either the old file or the whole new one, never a torn write. safetensors creates files
    readable by the owner only (mode 0600); the result gets the mode an ordinary new file would
    have (``0666`` minus the umask), so colleagues on a shared machine can load exported weights.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        os.close(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o666))  # the mode a new file gets here
        mode = tmp.stat().st_mode & 0o777
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
