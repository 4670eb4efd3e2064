"""The LayoutDiffuse adaptor inside a diffusers UNet, without renaming a single pretrained weight.

:class:`LayoutDiffusersUNet` holds the foundation UNet at ``unet.*`` (its state-dict keys unchanged
below that prefix) and the adaptor at ``adaptor.*`` and ``task_prompt.*`` (the names
:func:`~layoutdiffuse.nn.adaptor.is_adaptor_name` recognises, so ``param_groups`` and the
``freeze_backbone`` / ``separate`` training modes work unchanged). Nothing is added inside the
diffusers modules: the adaptor reaches them through

* **forward hooks** -- a :class:`~layoutdiffuse.nn.adaptor.LayoutAttention` runs on the output of
  every transformer block (``Transformer2DModel`` in Stable Diffusion, self-``Attention`` in LDM) at
  the chosen levels, or of every ResNet at a chosen level that has no attention (docs/method.md §3);
* **attention processors** (``Attention.set_processor``) -- :class:`TaskPromptProcessor` adds the
  task-aware prompts (docs/method.md §4). Text foundations: the prompt tokens are projected
  (bias-free) to the text-context dimension and appended to the text context of every
  cross-attention layer; each layer attends to them with its own pretrained ``to_k``/``to_v``.
  Unconditional foundations: every self-attention layer gets a
  :class:`~layoutdiffuse.nn.adaptor.TaskPromptAttention` (own bias-free projection to keys/values).

Identity at insertion is exact (``torch.equal``), by the same device as the pixel-space adaptor:
layout attention ends in a zero-initialised ``proj_out``, and the prompt branch of attention is a
second softmax over the prompt keys scaled by a zero-initialised per-head gate,
``a = softmax(q k_text^T) v_text + gate * softmax(q k_prompt^T) v_prompt``, added before the
layer's output projection. (Concatenating the prompts into one softmax would move softmax mass to
them even with a zero projection; the gate keeps the start exact and still gets a gradient from
the first step.)

Per-box text (``instance_prompt="text"``, docs/method.md §2a): the adaptor's phrase encoder is a
:class:`~layoutdiffuse.sd.phrases.FoundationPhraseEncoder` over the foundation's own frozen text
encoder (handed over by :meth:`LayoutDiffusersUNet.use_text_encoder`, never saved with the adaptor).

The original release's forms are options, so its checkpoints load exactly
(:mod:`layoutdiffuse.release`): ``task_prompt_form="concat"`` (per-layer prompts concatenated to the
text context, one softmax; ``image_in_kv`` appends the projected image tokens too,
:class:`ConcatTaskPrompt`), ``mask_pick="centre"`` and ``mid_block=False``.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..autoencoder import require_diffusers
from ..nn.adaptor import LayoutAdaptor, TaskPromptAttention, is_adaptor_name
from ..nn.blocks import AdaptorState
from ..nn.options import DiffusersLayoutOptions
from ..errors import StateDictError, UserError
from ..state_dicts import state_dict_mismatch
from .phrases import FoundationPhraseEncoder

log = logging.getLogger(__name__)

UNET_CLASSES = ("UNet2DConditionModel", "UNet2DModel")
_DEFAULT_PROCESSORS = ("AttnProcessor2_0",)


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers ``FrozenDict`` config as plain JSON data (tuples -> lists, private keys dropped)."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, default=list))


def checkpointed_call(module: nn.Module, *args: Any) -> Any:
    """diffusers' default gradient-checkpointing function, at module level so that models pickle
    (Lightning's ``ddp_spawn`` sends the module to its processes)."""
    return checkpoint(module.__call__, *args, use_reentrant=False)


class PromptGate(nn.Module):
    """The zero-initialised per-head gate of the task-prompt branch of one cross-attention layer."""

    def __init__(self, num_heads: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(num_heads))


class TaskPromptProcessor:
    """diffusers' ``AttnProcessor2_0`` plus a gated task-prompt branch.

    ``module``: a :class:`PromptGate` (cross-attention; the prompts are the last
    ``num_context_prompts`` tokens of ``encoder_hidden_states``) or a
    :class:`~layoutdiffuse.nn.adaptor.TaskPromptAttention` (self-attention; the prompt tokens are
    ``adaptor.task_prompts``). The base path is ``AttnProcessor2_0``'s code, op for op, so a zero
    gate reproduces the foundation bit for bit.
    """

    def __init__(self, module: nn.Module, num_context_prompts: int = 0, adaptor: LayoutAdaptor | None = None):
        if num_context_prompts and not isinstance(module, PromptGate):
            raise TypeError("cross-attention prompts need a PromptGate")
        if not num_context_prompts and (not isinstance(module, TaskPromptAttention) or adaptor is None):
            raise TypeError("self-attention prompts need a TaskPromptAttention and the adaptor holding the prompt tokens")
        self.module = module
        self.num_context_prompts = num_context_prompts
        self.adaptor = adaptor

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        prompts = None
        n_prompts = self.num_context_prompts
        if n_prompts:
            if encoder_hidden_states is None or encoder_hidden_states.shape[1] <= n_prompts:
                got = None if encoder_hidden_states is None else tuple(encoder_hidden_states.shape)
                raise UserError(f"this cross-attention layer expects the text context followed by {n_prompts} task-prompt "
                                 f"tokens (LayoutDiffusersUNet appends them), got encoder_hidden_states of shape {got}")
            encoder_hidden_states, prompts = encoder_hidden_states[:, :-n_prompts], encoder_hidden_states[:, -n_prompts:]

        # --- diffusers AttnProcessor2_0, unchanged --------------------------------------------------
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)

        # --- the task-prompt branch (zero at insertion) -------------------------------------------------
        hidden_states = hidden_states + self.prompt_branch(attn, query, prompts, batch_size, head_dim)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def prompt_branch(self, attn: nn.Module, query: torch.Tensor, prompts: torch.Tensor | None, batch_size: int, head_dim: int) -> torch.Tensor:
        """``gate * softmax(q pk^T / sqrt(c)) pv``: ``(B, heads, L, c)``."""
        if prompts is None:
            return self.module(query, self.adaptor.task_prompts)
        if attn.norm_cross:
            prompts = attn.norm_encoder_hidden_states(prompts)
        pk = attn.to_k(prompts).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        pv = attn.to_v(prompts).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:
            pk = attn.norm_k(pk)
        out = F.scaled_dot_product_attention(query, pk, pv)
        return self.module.gate.to(out.dtype)[None, :, None, None] * out


class ConcatTaskPrompt(nn.Module):
    """The original release's task-aware prompts of one cross-attention layer (``task_prompt_form="concat"``).

    ``prompt: (P, prompt_dim)`` is projected bias-free to the text width (``to_context``) and
    concatenated to the text context; with ``image_in_kv`` the layer's own (normed) image tokens,
    projected bias-free (``image_to_context``), are concatenated too. The layer's ``to_k``/``to_v`` then
    see one sequence: a single softmax over text, prompt and image tokens. Neither projection is
    zero-initialised (as in the release), so this form is not an identity at insertion.

    ``forward(hidden_states: (B, L, C), context: (B, S, D)) -> (B, S + P [+ L], D)``.
    """

    def __init__(self, num_prompts: int, prompt_dim: int, context_dim: int, query_dim: int, image_in_kv: bool = False):
        super().__init__()
        self.prompt = nn.Parameter(torch.randn(num_prompts, prompt_dim)) if num_prompts else None
        self.to_context = nn.Linear(prompt_dim, context_dim, bias=False) if num_prompts else None
        self.image_to_context = nn.Linear(query_dim, context_dim, bias=False) if image_in_kv else None

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        parts = [context]
        if self.prompt is not None:
            parts.append(self.to_context(self.prompt).to(context.dtype).expand(context.shape[0], -1, -1))
        if self.image_to_context is not None:
            parts.append(self.image_to_context(hidden_states).to(context.dtype))
        return torch.cat(parts, dim=1)


class ConcatPromptProcessor:
    """diffusers' ``AttnProcessor2_0`` on the text context extended by a :class:`ConcatTaskPrompt`."""

    def __init__(self, module: ConcatTaskPrompt):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.module = module
        self.base = AttnProcessor2_0()

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if encoder_hidden_states is None or hidden_states.ndim != 3:
            raise UserError("concatenated task prompts apply to cross-attention layers on (B, L, C) tokens with a text context")
        context = self.module(hidden_states, encoder_hidden_states)
        return self.base(attn, hidden_states, context, attention_mask, temb, *args, **kwargs)


class _LayoutHook:
    """Forward hook: run the layout-attention block ``key`` on a diffusers module's output."""

    def __init__(self, owner: "LayoutDiffusersUNet", key: str):
        self.owner, self.key = owner, key

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        return self.owner._after_site(self.key, output)


def _site_channels(module: nn.Module) -> int:
    for attr in ("in_channels", "query_dim", "out_channels"):  # Transformer2DModel, Attention, ResnetBlock2D
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    raise TypeError(f"cannot tell the channels of a {type(module).__name__}")


def layout_sites(unet: nn.Module, levels: Iterable[int], mid_block: bool = True) -> dict[str, tuple[str, int]]:
    """Where layout attention goes: ``{adaptor key: (module name in unet, channels)}``.

    Level ``i`` is the downsample exponent of the latent (``down_blocks[i]``, ``up_blocks[n-1-i]``,
    the middle block at ``n-1``). At a chosen level every attention module (transformer block) gets
    one after it; a level without attention gets one after every ResNet. ``mid_block=False``: none in
    the middle block (the original release's placement).
    """
    n = len(unet.down_blocks)
    levels = list(levels)
    bad = [lvl for lvl in levels if not isinstance(lvl, int) or not 0 <= lvl < n]
    if bad:
        raise UserError(f"adaptor levels {bad} out of range; this UNet has levels 0..{n - 1} "
                         f"(latent downsample exponents; block_out_channels={list(unet.config.block_out_channels)})")
    sites: dict[str, tuple[str, int]] = {}

    def add(prefix: str, block: nn.Module, level: int) -> None:
        if level not in levels or block is None:
            return
        attentions = [(j, a) for j, a in enumerate(getattr(block, "attentions", None) or []) if a is not None]
        chosen = [(f"{prefix}.attentions.{j}", a) for j, a in attentions] or [(f"{prefix}.resnets.{j}", r) for j, r in enumerate(block.resnets)]
        for name, module in chosen:
            sites[name.replace(".", "_")] = (name, _site_channels(module))

    for i, block in enumerate(unet.down_blocks):
        add(f"down_blocks.{i}", block, i)
    if mid_block:
        add("mid_block", unet.mid_block, n - 1)
    for j, block in enumerate(unet.up_blocks):
        add(f"up_blocks.{j}", block, n - 1 - j)
    return sites


class LayoutDiffusersUNet(nn.Module):
    """A diffusers UNet with the LayoutDiffuse adaptor; ``forward(x, t, cond) -> raw output``.

    Args:
        unet: a ``UNet2DConditionModel`` (text foundation: Stable Diffusion) or ``UNet2DModel``
            (unconditional foundation: LDM). The wrapper takes ownership: processors and hooks are
            installed on this object (deep-copy it first to keep a plain foundation).
        layout: adaptor options, :class:`~layoutdiffuse.nn.options.DiffusersLayoutOptions` (``num_classes``
            required for class prompts; ``task_prompt_form="concat"`` is the release's form, see
            :class:`ConcatTaskPrompt`; ``instance_prompt="text"``: a phrase per box, read by the
            foundation's own text encoder, :mod:`layoutdiffuse.sd.phrases`, handed over by :meth:`use_text_encoder`).
        foundation: the foundation kind, stored in :attr:`config` for checkpoints.

    ``cond``: ``{"layout": (B, N, 5)}`` or ``{"mask": (B, H, W)}`` (text prompts: also ``"box_text"``,
    per image a list of its boxes' phrases), plus for text foundations ``"context": (B, S, D)`` (the
    text encoder's hidden states; :class:`LatentDDPMTraining` encodes captions).
    ``x: (B, C, h, w)``, ``t: (B,)`` -> ``(B, C_out, h, w)``.
    """

    def __init__(self, unet: nn.Module, layout: Mapping[str, Any], foundation: str | None = None):
        super().__init__()
        diffusers = require_diffusers()
        from diffusers.models.attention_processor import Attention

        if isinstance(unet, diffusers.UNet2DConditionModel):
            self.text = True
            cfg = unet.config
            unsupported = {k: cfg.get(k) for k in ("encoder_hid_dim", "addition_embed_type", "class_embed_type") if cfg.get(k) is not None}
            if unsupported:
                raise NotImplementedError(f"UNet2DConditionModel with {unsupported} (SDXL-style extra conditioning) is not supported; "
                                          "Stable Diffusion 1.x / 2.x UNets are")
        elif isinstance(unet, diffusers.UNet2DModel):
            self.text = False
        else:
            raise TypeError(f"LayoutDiffusersUNet adapts a diffusers {' or '.join(UNET_CLASSES)}, got {type(unet).__name__}")
        opts = DiffusersLayoutOptions.parse(layout).to_dict()
        phrases = None
        if opts.get("instance_prompt") == "text":
            if not self.text:
                raise UserError("instance_prompt 'text' reads each box's phrase with the foundation's text encoder; this "
                                "UNet2DModel foundation (an unconditional LDM) has none: use class prompts (num_classes)")
            phrases = FoundationPhraseEncoder(unet.config.cross_attention_dim, opts["embed_dim"])
        concat = opts["task_prompt_form"] == "concat"
        if concat and not self.text:
            raise UserError("task_prompt_form 'concat' (the release's) needs a text UNet (UNet2DConditionModel); "
                            "use 'gated' for unconditional foundations")
        if (opts["image_in_kv"] or opts["prompt_dim"] is not None) and not concat:
            raise UserError("image_in_kv and prompt_dim are options of task_prompt_form 'concat'")
        self.unet = unet
        self.foundation = foundation
        self.layout_config = opts
        self._state: AdaptorState | None = None  # the adaptor's state during forward, for the hooks

        sites = layout_sites(unet, opts["levels"], opts["mid_block"])
        if not sites:
            raise UserError(f"no UNet block at levels {opts['levels']} to attach layout attention to")
        self.adaptor = LayoutAdaptor({k: ch for k, (_, ch) in sites.items()}, opts.get("num_classes", 0), opts["embed_dim"],
                                     opts["num_heads"], 0 if concat else opts["num_task_prompts"], opts["mask"],
                                     opts["region_mask_attention"], opts["mask_pick"], phrase_encoder=phrases)
        self.task_prompt = nn.ModuleDict()
        self.num_context_prompts = 0
        if concat and (opts["num_task_prompts"] or opts["image_in_kv"]):
            prompt_dim = opts["prompt_dim"] or opts["embed_dim"]
            for name, m in unet.named_modules():
                if isinstance(m, Attention) and m.is_cross_attention:
                    module = ConcatTaskPrompt(opts["num_task_prompts"], prompt_dim, unet.config.cross_attention_dim, m.query_dim,
                                              opts["image_in_kv"])
                    m.set_processor(ConcatPromptProcessor(module))
                    self.task_prompt[name.replace(".", "_")] = module
        elif opts["num_task_prompts"]:
            layers = [(name, m) for name, m in unet.named_modules() if isinstance(m, Attention) and (m.is_cross_attention or not self.text)]
            odd = sorted({type(m.processor).__name__ for _, m in layers} - set(_DEFAULT_PROCESSORS))
            if odd:
                raise NotImplementedError(f"task prompts replace diffusers' default attention processor (AttnProcessor2_0); "
                                          f"this UNet uses {odd}: call unet.set_default_attn_processor() or set_attn_processor(AttnProcessor2_0()) first")
            if self.text:
                self.num_context_prompts = opts["num_task_prompts"]
                self.task_prompt["context"] = nn.Linear(opts["embed_dim"], unet.config.cross_attention_dim, bias=False)
            for name, m in layers:
                key = name.replace(".", "_")
                if self.text:
                    module: nn.Module = PromptGate(m.heads)
                    m.set_processor(TaskPromptProcessor(module, num_context_prompts=self.num_context_prompts))
                else:
                    module = TaskPromptAttention(m.inner_dim, opts["embed_dim"], m.heads)
                    m.set_processor(TaskPromptProcessor(module, adaptor=self.adaptor))
                self.task_prompt[key] = module
        for key, (name, _) in sites.items():
            unet.get_submodule(name).register_forward_hook(_LayoutHook(self, key))
        param = next(unet.parameters())
        self.adaptor.to(param.device)
        self.task_prompt.to(param.device)
        log.info("layout adaptor on %s: %d layout-attention blocks at levels %s, %d task-prompt layers, %d adaptor parameters",
                 type(unet).__name__, len(sites), opts["levels"], len(self.task_prompt) - int(self.text and bool(self.num_context_prompts)),
                 sum(p.numel() for n, p in self.named_parameters() if is_adaptor_name(n)))

    def use_text_encoder(self, text_encoder: nn.Module | None, tokenizer: Any) -> None:
        """Hand the foundation's frozen text encoder and tokenizer to the phrase encoder of text prompts
        (:class:`~layoutdiffuse.sd.phrases.FoundationPhraseEncoder`; referenced, never saved); nothing
        to do for class prompts. :class:`~layoutdiffuse.training.latent.LatentDDPMTraining` calls it."""
        if isinstance(self.adaptor.phrase_encoder, FoundationPhraseEncoder):
            self.adaptor.phrase_encoder.use_text_encoder(text_encoder, tokenizer)

    def enable_gradient_checkpointing(self) -> None:
        """Activation checkpointing of the UNet's blocks (diffusers) and of the layout-attention blocks."""
        self.unet.enable_gradient_checkpointing(gradient_checkpointing_func=checkpointed_call)

    def disable_gradient_checkpointing(self) -> None:
        self.unet.disable_gradient_checkpointing()

    # --- checkpoints -----------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """Plain data that rebuilds the architecture (:meth:`from_config`); stored in checkpoints."""
        return {"foundation": self.foundation, "unet_class": type(self.unet).__name__,
                "unet": plain_config(self.unet.config), "layout": dict(self.layout_config)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "LayoutDiffusersUNet":
        """The architecture of :attr:`config`, randomly initialised (load a state dict next)."""
        diffusers = require_diffusers()
        name = config.get("unet_class")
        if name not in UNET_CLASSES:
            raise UserError(f"unknown unet_class {name!r}; choose one of: {', '.join(UNET_CLASSES)}")
        unet = getattr(diffusers, name).from_config(dict(config["unet"]))
        return cls(unet, config["layout"], foundation=config.get("foundation"))

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict`` whose strict failure lists missing, unexpected and mis-shaped keys,
        foundation (``unet.*``) and adaptor keys apart."""
        if strict:
            report = state_dict_mismatch(self, state_dict)
            if report:
                raise StateDictError(f"state dict does not match this adapted {type(self.unet).__name__}: {report}")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # --- forward -----------------------------------------------------------------------------------
    @property
    def condition_classes(self) -> dict[str, int]:
        """The adaptor's condition kind and its number of classes (the boundary check's)."""
        return self.adaptor.condition_classes

    def _after_site(self, key: str, output: Any) -> Any:
        state = self._state
        if state is None:
            raise RuntimeError("a layout-attention hook ran outside LayoutDiffusersUNet.forward; call the adapted model "
                               "(model(x, t, cond)), not model.unet directly")
        block = self.adaptor.blocks[key]

        def run(h: torch.Tensor) -> torch.Tensor:
            if getattr(self.unet, "is_gradient_checkpointing", False) and torch.is_grad_enabled():
                return checkpoint(block, h, state, use_reentrant=False)
            return block(h, state)

        if isinstance(output, torch.Tensor):
            return run(output)
        if isinstance(output, tuple):
            return (run(output[0]), *output[1:])
        output.sample = run(output.sample)  # a diffusers output dataclass
        return output

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any] | None = None) -> torch.Tensor:
        b = x.shape[0]
        state = self.adaptor.prepare(cond, b)
        if self.text:
            context = (cond or {}).get("context")
            if context is None:
                raise UserError("this adapted model is text-conditioned: cond['context'] (B, S, D) must hold the text encoder's "
                                 "hidden states (LatentDDPMTraining encodes cond['caption']; use the empty caption for none)")
            if context.ndim != 3 or context.shape[0] != b:
                raise UserError(f"cond['context'] must have shape ({b}, S, D), got {tuple(context.shape)}")
            if self.num_context_prompts:
                prompts = self.task_prompt["context"](self.adaptor.task_prompts).to(context.dtype)
                context = torch.cat([context, prompts.expand(b, -1, -1)], dim=1)
        self._state = state
        try:
            if self.text:
                return self.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
            return self.unet(x, t, return_dict=False)[0]
        finally:
            self._state = None
