"""Networks: blocks, the UNet, and the LayoutDiffuse adaptor.

The names load lazily, so :mod:`layoutdiffuse.nn.options` (the adaptor's options, read by config
validation) imports without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LayoutAdaptor": "adaptor", "LayoutAttention": "adaptor", "TaskPromptAttention": "adaptor", "box_prompt_map": "adaptor",
    "mask_prompt_map": "adaptor", "rasterize_boxes": "adaptor",
    "ATTN_BLOCKS": "blocks", "RES_BLOCKS": "blocks", "AttentionBlock": "blocks", "ConditionBlock": "blocks", "EmbedBlock": "blocks",
    "ResBlock": "blocks", "ScaleShiftResBlock": "blocks",
    "UNet": "unet",
    "LayoutAdaptorOptions": "options", "DiffusersLayoutOptions": "options",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
