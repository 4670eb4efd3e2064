"""The one data root: ``$LAYOUTDIFFUSE_DATA``, default ``~/data``."""
from __future__ import annotations

import os
from pathlib import Path


def data_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$LAYOUTDIFFUSE_DATA``, else ``~/data`` (user-expanded)."""
    if root is None:
        root = os.environ.get("LAYOUTDIFFUSE_DATA", "~/data")
    return Path(root).expanduser()
