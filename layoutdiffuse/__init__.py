"""layoutdiffuse: layout-to-image diffusion (DDPM, improved DDPM, the LayoutDiffuse adaptor).

``import layoutdiffuse`` stays light (no torch, no Lightning) until :func:`sample` is first used,
so ``python -m layoutdiffuse --help`` answers at once.
"""
from typing import Any

__version__ = "0.1.0"
__all__ = ["sample"]


def __getattr__(name: str) -> Any:
    if name == "sample":
        from .sampling import sample

        return sample
    raise AttributeError(f"module 'layoutdiffuse' has no attribute {name!r}")
