"""Per-box text prompts on a Stable Diffusion / LDM foundation: the foundation's own text encoder.

:class:`FoundationPhraseEncoder` turns a box's phrase into a prompt vector of the layout attention
(``encode(phrases) -> (P, embed_dim)``, the interface
:meth:`~layoutdiffuse.nn.adaptor.LayoutAdaptor.phrase_table` reads) in two steps:

* the **frozen** text encoder of the foundation reads the phrase (no gradient ever reaches it) and is
  pooled to one vector of its width ``D``: CLIP (Stable Diffusion) gives its pooled output, the
  final-layer-normed state of the end-of-text token; LDMBert (the LAION LDM) has no pooled output,
  so the phrase's vector is the mean of its token states (special tokens included, padding not);
* a **trainable** ``proj: nn.Linear(D, embed_dim)`` maps it into the prompt space.

The text encoder is *referenced*, not owned: it is not a submodule, so it is in neither the
adaptor's parameters nor its state dict (a checkpoint holds only ``proj``), a device or dtype move
of the UNet does not move it, and a deep copy (the EMA model) shares it. The training module that
holds the foundation's text encoder hands it over (:meth:`FoundationPhraseEncoder.use_text_encoder`,
called by :class:`~layoutdiffuse.training.latent.LatentDDPMTraining`), also when a checkpoint is loaded.

Phrases are padded to the longest of the batch; both poolings are blind to padding (CLIP's attention
is causal and the end-of-text token precedes the padding; LDMBert is given the attention mask). A
phrase longer than the encoder reads (``tokenizer.model_max_length`` tokens with the special ones)
is refused, never cut. In eval mode without gradients (sampling) each phrase is encoded once per run
(:class:`~layoutdiffuse.nn.phrase_encoder.CachedPhraseEncoder`). The frozen encoder's pooled states
are also kept across training steps (the same phrase gives the same states while the encoder is
frozen): up to :data:`FEATURE_CACHE_SIZE` phrases, least recently used dropped first, per encoder
device and dtype; handing over another encoder empties it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..nn.phrase_encoder import CachedPhraseEncoder


#: phrases whose frozen pooled states are kept across training steps (COCO-stuff has 182 class names, VG 178)
FEATURE_CACHE_SIZE = 65536


class SharedFrozen:
    """A frozen text encoder and its tokenizer, referenced by a module without being its submodule;
    ``copy.deepcopy`` shares it (an EMA copy of the denoiser does not duplicate the text encoder)."""

    def __init__(self, text_encoder: nn.Module, tokenizer: Any):
        self.text_encoder, self.tokenizer = text_encoder, tokenizer

    def __deepcopy__(self, memo: dict) -> "SharedFrozen":
        return self


def text_width(text_encoder: nn.Module) -> int:
    """The width of a transformers text encoder's token states (CLIP ``hidden_size``, LDMBert ``d_model``)."""
    config = getattr(text_encoder, "config", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    if not isinstance(width, int):
        raise UserError(f"cannot tell the width of a {type(text_encoder).__name__} text encoder (no config.hidden_size or d_model)")
    return width


class FoundationPhraseEncoder(CachedPhraseEncoder):
    """Phrases -> frozen foundation text encoder, pooled -> trainable projection -> ``(P, embed_dim)``.

    ``text_dim``: the text encoder's width ``D`` (the UNet's ``cross_attention_dim``); ``embed_dim``:
    the prompt width of the layout attention. The text encoder arrives with :meth:`use_text_encoder`.
    """

    def __init__(self, text_dim: int, embed_dim: int):
        super().__init__()
        self.text_dim = int(text_dim)
        self.proj = nn.Linear(self.text_dim, embed_dim)
        self.frozen: SharedFrozen | None = None
        self._features: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def extra_repr(self) -> str:
        encoder = "none yet" if self.frozen is None else type(self.frozen.text_encoder).__name__
        return f"text_dim={self.text_dim}, text_encoder={encoder}"

    def use_text_encoder(self, text_encoder: nn.Module | None, tokenizer: Any) -> None:
        """Read phrases with ``text_encoder`` and ``tokenizer`` (the foundation's; ``None``: none, phrases are then refused)."""
        self._cache.clear()
        self._features.clear()
        if text_encoder is None:
            self.frozen = None
            return
        if text_width(text_encoder) != self.text_dim:
            raise UserError(f"this model's phrase projection reads {self.text_dim}-wide text states, but the given "
                            f"{type(text_encoder).__name__} gives {text_width(text_encoder)}; is it the model's foundation?")
        self.frozen = SharedFrozen(text_encoder, tokenizer)

    def tokens(self, phrases: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``(P, L)`` and attention mask ``(P, L)``, padded to the longest phrase (``L``), on
        the text encoder's device; a phrase the encoder cannot read whole is refused."""
        tokenizer = self.frozen.tokenizer
        limit = tokenizer.model_max_length
        ids = tokenizer(list(phrases), verbose=False).input_ids  # counted first: a long phrase is refused here, not warned about
        for text, row in zip(phrases, ids):
            if not text.strip():
                raise UserError(f"a box's phrase is empty ({text!r}); give each box a few words, e.g. 'a red car'")
            if len(row) > limit:
                raise UserError(f"the phrase {text[:60]!r}{'...' if len(text) > 60 else ''} is {len(row)} tokens long; this "
                                f"model's text encoder reads at most {limit} (shorten it)")
        tok = tokenizer(list(phrases), padding="longest", return_tensors="pt")
        device = next(self.frozen.text_encoder.parameters()).device
        return tok.input_ids.to(device), tok.attention_mask.to(device)

    @torch.no_grad()
    def features(self, phrases: Sequence[str]) -> torch.Tensor:
        """``P`` phrases -> pooled frozen text states ``(P, D)``, the phrases not seen before read by the
        encoder (:meth:`read`), the others from the cache (see the module docstring)."""
        if self.frozen is None:
            raise UserError("this model reads a phrase per box with its foundation's text encoder, but none was handed to it "
                            "(LatentDDPMTraining does; alone, call model.use_text_encoder(text_encoder, tokenizer))")
        weight = next(self.frozen.text_encoder.parameters())
        where = (str(weight.device), weight.dtype)
        new = [p for p in dict.fromkeys(phrases) if (p, *where) not in self._features]
        if new:
            for p, state in zip(new, self.read(new)):
                self._features[(p, *where)] = state
        for p in dict.fromkeys(phrases):
            self._features.move_to_end((p, *where))
        out = torch.stack([self._features[(p, *where)] for p in phrases])
        while len(self._features) > FEATURE_CACHE_SIZE:
            self._features.popitem(last=False)
        return out

    @torch.no_grad()
    def read(self, phrases: Sequence[str]) -> torch.Tensor:
        """``P`` phrases through the frozen encoder, pooled: ``(P, D)`` (see the module docstring)."""
        ids, mask = self.tokens(phrases)
        out = self.frozen.text_encoder(input_ids=ids, attention_mask=mask)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:  # CLIP: the end-of-text token's state
            return pooled
        states = out[0]  # LDMBert: the mean over the phrase's tokens
        weight = mask.to(states.dtype)[..., None]
        return (states * weight).sum(1) / weight.sum(1)

    def forward(self, phrases: Sequence[str]) -> torch.Tensor:
        """``P`` phrases -> ``(P, embed_dim)`` prompt vectors (a gradient reaches ``proj`` only)."""
        if not phrases:
            return self.proj.weight.new_zeros(0, self.proj.out_features)
        return self.proj(self.features(phrases).to(self.proj.weight))
