"""The denoising UNet (DDPM / improved-DDPM layout), with hook points for the layout adaptor.

The network knows nothing about noise schedules: ``forward(x, t, cond)`` maps a noisy image and a
timestep to the raw model output (eps, x0, v, or eps + variance channels, as the diffusion asks).
A class-conditional UNet (``num_classes``, as in improved DDPM) also reads ``cond["label"]``.

Adaptor hook: every input block, the middle block and every output block has a *key*
(``input_3``, ``middle``, ``output_5``). When ``self.adaptor`` holds a module for a key, that
module runs on the block's output: ``h = adaptor[key](h, state)``, ``state`` the adaptor's
:class:`~layoutdiffuse.nn.blocks.AdaptorState` of the pass. Adaptor modules live under
``adaptor.`` so the foundation's state-dict keys never change.

``cond`` is trusted: it is checked once at the boundary (:mod:`layoutdiffuse.conditions`; the
model functions of :mod:`layoutdiffuse.diffusion.guidance` and the data loader's collate do it,
with the classes of :attr:`UNet.condition_classes`).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .blocks import ATTN_BLOCKS, RES_BLOCKS, AdaptorState, BlockSequential, Cond, group_norm, timestep_embedding, zero_module
from ..conditions import condition_kind
from ..errors import UserError


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


POSITIVE_INTS = ("in_channel", "out_channel", "base_channel", "num_heads")


def check_arguments(args: dict[str, Any]) -> None:
    """Numbers that build a working UNet, or one :class:`UserError` naming the argument and the range."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for key in POSITIVE_INTS:
        if key in args and not (is_int(args[key]) and args[key] >= 1):
            raise UserError(f"UNet argument '{key}' must be an integer >= 1, got {args[key]!r}")
    classes = args.get("num_classes")
    if classes is not None and not (is_int(classes) and classes >= 1):
        raise UserError(f"UNet argument 'num_classes' must be an integer >= 1 or null (unconditional), got {classes!r}")
    if "num_res_blocks" in args and not (is_int(args["num_res_blocks"]) and args["num_res_blocks"] >= 0):
        raise UserError(f"UNet argument 'num_res_blocks' must be an integer >= 0, got {args['num_res_blocks']!r}")
    mult = args.get("channel_mult", (1,))
    if not (isinstance(mult, (list, tuple)) and len(mult) >= 1 and all(is_int(m) and m >= 1 for m in mult)):
        raise UserError(f"UNet argument 'channel_mult' must be a non-empty list of integers >= 1, got {mult!r}")
    dropout = args.get("dropout", 0.0)
    if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        raise UserError(f"UNet argument 'dropout' must be a number in [0, 1), got {dropout!r}")
    heads, base = args.get("num_heads", 1), args.get("base_channel", 64)
    levels = args.get("attn_levels", (1,))
    if not (isinstance(levels, (list, tuple)) and all(is_int(lvl) and 0 <= lvl < len(mult) for lvl in levels)):
        raise UserError(f"UNet argument 'attn_levels' must list levels in 0..{len(mult) - 1} (one per channel_mult entry), got {levels!r}")
    widths = sorted({base * mult[lvl] for lvl in levels if is_int(lvl) and 0 <= lvl < len(mult)} | {base * mult[-1]})  # + middle block
    bad = [w for w in widths if w % heads]
    if bad:
        raise UserError(f"UNet argument 'num_heads' ({heads}) must divide the channels of every attention block ({', '.join(map(str, widths))})")


class UNet(nn.Module):
    """UNet of DDPM / improved DDPM.

    Args:
        in_channel: image channels in.
        out_channel: channels out (2x ``in_channel`` for learned variance).
        base_channel: channels at the first level.
        channel_mult: per-level multipliers of ``base_channel``; level ``i`` has downsample factor ``2**i``.
        num_res_blocks: ResBlocks per level (the decoder uses one more).
        attn_levels: levels (downsample factors ``2**i`` given as ``i``) that get an attention block
            after each ResBlock; the middle block always has one.
        num_heads: attention heads.
        dropout: dropout in ResBlocks.
        res_block_type / attn_block_type: registered names (see ``RES_BLOCKS``, ``ATTN_BLOCKS``).
        layout: optional adaptor config (see :mod:`layoutdiffuse.nn.adaptor`); ``None`` = foundation.
        num_classes: class-conditional model (improved DDPM's ``class_cond``): a learned embedding
            per class, plus one for "no class" (label -1, the unconditional branch of classifier-free
            guidance), is added to the timestep embedding. ``None`` = unconditional.

    Shapes: ``x: (B, in_channel, H, W)``, ``t: (B,)`` -> ``(B, out_channel, H, W)``; ``H, W``
    divisible by ``2 ** (len(channel_mult) - 1)``; ``cond["label"]: (B,)`` integers in
    ``[-1, num_classes)`` (missing = all -1).
    """

    def __init__(
        self,
        in_channel: int = 1,
        out_channel: int = 1,
        base_channel: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attn_levels: Sequence[int] = (1,),
        num_heads: int = 1,
        dropout: float = 0.0,
        res_block_type: str = "scale_shift",
        attn_block_type: str = "self",
        layout: dict[str, Any] | None = None,
        num_classes: int | None = None,
    ):
        super().__init__()
        check_arguments(dict(in_channel=in_channel, out_channel=out_channel, base_channel=base_channel, channel_mult=channel_mult,
                             num_res_blocks=num_res_blocks, attn_levels=attn_levels, num_heads=num_heads, dropout=dropout,
                             num_classes=num_classes))
        self.config = dict(
            in_channel=in_channel, out_channel=out_channel, base_channel=base_channel,
            channel_mult=list(channel_mult), num_res_blocks=num_res_blocks, attn_levels=list(attn_levels),
            num_heads=num_heads, dropout=dropout, res_block_type=res_block_type,
            attn_block_type=attn_block_type, layout=layout,
        )
        if num_classes is not None:
            self.config["num_classes"] = num_classes  # absent for unconditional models: their configs stay as before
        Res = RES_BLOCKS.get(res_block_type)
        Attn = ATTN_BLOCKS.get(attn_block_type)
        bad_levels = [lvl for lvl in attn_levels if not 0 <= lvl < len(channel_mult)]
        if bad_levels:
            raise UserError(f"attn_levels {bad_levels} out of range; levels are 0..{len(channel_mult) - 1}")
        emb_dim = 4 * base_channel
        self.base_channel = base_channel
        self.time_embed = nn.Sequential(nn.Linear(base_channel, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.num_classes = num_classes
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None  # row num_classes = no class

        #: level (downsample exponent) and channels of each hook key, for the adaptor
        self.block_info: dict[str, tuple[int, int]] = {}
        self.input_blocks = nn.ModuleList([BlockSequential(nn.Conv2d(in_channel, base_channel, 3, padding=1))])
        self.block_info["input_0"] = (0, base_channel)
        skip_channels = [base_channel]
        ch = base_channel
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [Res(ch, base_channel * mult, emb_dim, dropout)]
                ch = base_channel * mult
                if level in attn_levels:
                    layers.append(Attn(ch, num_heads))
                self.block_info[f"input_{len(self.input_blocks)}"] = (level, ch)
                self.input_blocks.append(BlockSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.block_info[f"input_{len(self.input_blocks)}"] = (level + 1, ch)
                self.input_blocks.append(BlockSequential(Downsample(ch)))
                skip_channels.append(ch)

        last = len(channel_mult) - 1
        self.middle_block = BlockSequential(Res(ch, ch, emb_dim, dropout), Attn(ch, num_heads), Res(ch, ch, emb_dim, dropout))
        self.block_info["middle"] = (last, ch)

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [Res(ch + skip_channels.pop(), base_channel * mult, emb_dim, dropout)]
                ch = base_channel * mult
                if level in attn_levels:
                    layers.append(Attn(ch, num_heads))
                out_level = level
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    out_level = level - 1
                self.block_info[f"output_{len(self.output_blocks)}"] = (out_level, ch)
                self.output_blocks.append(BlockSequential(*layers))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channel, 3, padding=1)))
        self.adaptor: nn.Module | None = None
        if layout is not None:
            from .adaptor import LayoutAdaptor

            LayoutAdaptor.attach(self, **layout)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config["channel_mult"]) - 1)

    @property
    def condition_classes(self) -> dict[str, int]:
        """The number of classes per condition kind this model reads (``label``; the adaptor's ``layout``
        or ``mask``), for the boundary check of :func:`layoutdiffuse.conditions.check_condition`."""
        classes = dict(self.adaptor.condition_classes) if self.adaptor is not None else {}
        if self.num_classes:
            classes["label"] = self.num_classes
        return classes

    def label_index(self, cond: Cond, batch: int, device: torch.device) -> torch.Tensor:
        """Rows of ``label_embed`` ``(B,)`` for ``cond["label"]`` (-1 or missing -> the "no class" row).
        Labels are checked here too (a few integers: cheap), so a direct call never embeds a wrong row."""
        labels = cond.get("label") if isinstance(cond, dict) else None
        if labels is None:
            return torch.full((batch,), self.num_classes, device=device, dtype=torch.long)
        labels = torch.as_tensor(labels, device=device)
        condition_kind("label").check(labels, batch, self.num_classes)
        return torch.where(labels < 0, self.num_classes, labels).long()

    def _hook(self, key: str, h: torch.Tensor, state: AdaptorState | None) -> torch.Tensor:
        if self.adaptor is not None and key in self.adaptor.blocks:
            h = self.adaptor.blocks[key](h, state)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Cond = None) -> torch.Tensor:
        f = self.downsample_factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise UserError(f"image size {tuple(x.shape[-2:])} must be divisible by {f} for channel_mult {self.config['channel_mult']}")
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        state = self.adaptor.prepare(cond, x.shape[0]) if self.adaptor is not None else None
        emb = self.time_embed(timestep_embedding(t, self.base_channel))
        if self.label_embed is not None:
            emb = emb + self.label_embed(self.label_index(cond, x.shape[0], x.device))
        inner = cond if state is None else state  # what the blocks get
        hs = []
        h = x
        for i, block in enumerate(self.input_blocks):
            h = self._hook(f"input_{i}", block(h, emb, inner), state)
            hs.append(h)
        h = self._hook("middle", self.middle_block(h, emb, inner), state)
        for i, block in enumerate(self.output_blocks):
            h = self._hook(f"output_{i}", block(torch.cat([h, hs.pop()], dim=1), emb, inner), state)
        return self.out(h)
