"""UNet building blocks.

Two abstract roles, as in the original code release:

* :class:`EmbedBlock` -- ``forward(x, emb)``: takes the time embedding (ResBlocks).
* :class:`ConditionBlock` -- ``forward(x, cond)``: takes the condition dict
  (e.g. ``{"layout": (B, N, 5)}``), or inside an adapted network the adaptor's
  :class:`AdaptorState`; layout attention and prompted attention are ConditionBlocks.

Concrete ResBlocks and AttentionBlocks are registered by name (``res_block_type``,
``attn_block_type``) so configs can swap them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import Registry
from ..errors import UserError

RES_BLOCKS: Registry[type] = Registry("res_block_type")
ATTN_BLOCKS: Registry[type] = Registry("attn_block_type")



@dataclass
class AdaptorState:
    """What the condition blocks of an adapted network get in one forward pass, in place of the
    caller's condition dict (which is never written to); made by
    :meth:`~layoutdiffuse.nn.adaptor.LayoutAdaptor.prepare`.

    ``prompt_table: (num_classes + 1, D)`` instance prompts (last row null); ``layout: (B, N, 5)``
    (box mode) or ``mask: (B, H, W)`` (mask mode), as checked at the boundary
    (:mod:`layoutdiffuse.conditions`), ``None`` = empty; ``task_prompts: (T, D)`` or ``None``;
    ``regions``: scratch shared by the blocks of this pass (the layout bookkeeping per resolution).
    """

    prompt_table: torch.Tensor
    layout: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    task_prompts: torch.Tensor | None = None
    regions: dict[Any, Any] = field(default_factory=dict)


Cond = dict[str, Any] | AdaptorState | None


class EmbedBlock(nn.Module):
    """A block that takes the time embedding: ``forward(x, emb)``."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class ConditionBlock(nn.Module):
    """A block that takes the condition dict: ``forward(x, cond)``.

    ``cond`` may be ``None`` or miss the key a block needs; the block must then act as the
    unconditional model would (usually: as if the layout were empty).
    """

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class BlockSequential(nn.Sequential):
    """Runs blocks in order, giving each what its role asks for."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        for block in self:
            if isinstance(block, EmbedBlock):
                x = block(x, emb)
            elif isinstance(block, ConditionBlock):
                x = block(x, cond)
            else:
                x = block(x)
        return x


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or fewer when ``channels`` is small."""
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (identity-at-start residual branches)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding. ``t: (B,)`` (may be fractional) -> ``(B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


@RES_BLOCKS.register("basic")
class ResBlock(EmbedBlock):
    """GroupNorm-SiLU-conv twice, time embedding added in between (DDPM style).

    ``x: (B, in_channel, H, W)``, ``emb: (B, emb_dim)`` -> ``(B, out_channel, H, W)``.
    """

    scale_shift = False

    def __init__(self, in_channel: int, out_channel: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(in_channel), nn.SiLU(), nn.Conv2d(in_channel, out_channel, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_channel * (2 if self.scale_shift else 1)))
        self.out_norm = group_norm(out_channel)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(out_channel, out_channel, 3, padding=1)))
        self.skip = nn.Identity() if in_channel == out_channel else nn.Conv2d(in_channel, out_channel, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        return self.skip(x) + self.out_layers(h)


@RES_BLOCKS.register("scale_shift")
class ScaleShiftResBlock(ResBlock):
    """ResBlock with FiLM time conditioning: ``norm(h) * (1 + scale) + shift`` (improved DDPM)."""

    scale_shift = True


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, C, L) -> (B, heads, L, C // heads)``."""
    b, c, l = t.shape
    return t.reshape(b, heads, c // heads, l).transpose(-1, -2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """``(B, heads, L, c) -> (B, heads * c, L)``."""
    b, h, l, c = t.shape
    return t.transpose(-1, -2).reshape(b, h * c, l)


@ATTN_BLOCKS.register("self")
class AttentionBlock(ConditionBlock):
    """Multi-head self-attention over all ``H*W`` cells, residual, zero-initialised output.

    ``x: (B, C, H, W)`` -> same shape. Subclasses may change :meth:`attend`.

    ``task_prompt``: ``None``, or a module set by the layout adaptor
    (:class:`~layoutdiffuse.nn.adaptor.TaskPromptAttention`); when ``cond`` carries task prompts
    (:attr:`AdaptorState.task_prompts`, or ``cond["task_prompts"]`` for a block used on its own) the
    output ``task_prompt(q, tokens)`` is added to the attention.
    """

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        if channels % num_heads:
            raise UserError(f"attention channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))
        self.task_prompt: nn.Module | None = None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cond: Cond) -> torch.Tensor:
        """``q, k, v: (B, heads, L, c)`` -> ``(B, heads, L, c)``."""
        return F.scaled_dot_product_attention(q, k, v)

    def forward(self, x: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))
        q, k, v = (split_heads(t, self.num_heads) for t in qkv.chunk(3, dim=1))
        a = self.attend(q, k, v, cond)
        tokens = cond.task_prompts if isinstance(cond, AdaptorState) else (cond or {}).get("task_prompts")
        if self.task_prompt is not None and tokens is not None:
            a = a + self.task_prompt(q, tokens)
        a = merge_heads(a)
        return x + self.proj_out(a).reshape(b, c, h, w)
