"""Instance prompts from text: a small phrase encoder trained with the adaptor (the toys' text encoder).

A phrase is normalised (lower case, single spaces) and split into words; each word is looked up
in a fixed vocabulary (:attr:`PhraseEncoder.words`; a word outside it reads as the unknown word,
warned once per word). The phrase's embedding is the attention pool of its word embeddings (a
learned score per word, softmax over the phrase's words: the model learns to weigh "seven" and
"red" above "the" and "in"), projected to the prompt width. Word order does not matter, which is
what makes a (digit, colour) pair never seen in training expressible: its words were each seen.

``encode(phrases) -> (P, D)``. In eval mode without gradients (sampling), each phrase is encoded once
and cached until the weights can change again (``train()``, a device or dtype move, a state-dict load);
:class:`CachedPhraseEncoder` holds that cache for every phrase encoder (the foundations' too).
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from ..errors import UserError

log = logging.getLogger(__name__)

#: words warned about as unknown (once per process and word)
_WARNED: set[str] = set()


def phrase_words(text: str) -> list[str]:
    """The words of a phrase: lower case, split on white space."""
    return text.lower().split()


class CachedPhraseEncoder(nn.Module):
    """The base of phrase encoders: ``forward(phrases) -> (P, D)``, computed by a subclass whose last
    layer is ``self.proj`` (an ``nn.Linear`` to ``D``); :meth:`encode` reads it from a per-run cache
    when sampling. The toys' :class:`PhraseEncoder` and the foundations'
    :class:`~layoutdiffuse.sd.phrases.FoundationPhraseEncoder` are the two."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[str, torch.Tensor] = {}

    def encode(self, phrases: Sequence[str]) -> torch.Tensor:
        """:meth:`forward` of ``phrases``, from the cache when sampling (eval mode, no gradients)."""
        if self.training or torch.is_grad_enabled():
            return self(phrases)
        new = [p for p in dict.fromkeys(phrases) if p not in self._cache]
        if new:
            self._cache.update(zip(new, self(new)))
        if not phrases:
            return self.proj.weight.new_zeros(0, self.proj.out_features)
        return torch.stack([self._cache[p] for p in phrases])

    def train(self, mode: bool = True) -> "CachedPhraseEncoder":
        self._cache.clear()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # device / dtype moves
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._cache.clear()
        super()._load_from_state_dict(*args, **kwargs)


class PhraseEncoder(CachedPhraseEncoder):
    """Words -> attention-pooled embedding -> ``(D,)`` prompt vector (see the module docstring).

    ``vocabulary``: the known words; ``embed_dim``: the prompt width ``D``; ``max_words``: the
    longest phrase read (a longer one is refused, never cut).
    """

    def __init__(self, vocabulary: Sequence[str], embed_dim: int, max_words: int = 16):
        super().__init__()
        words = [w.lower() for w in vocabulary]
        if not words or len(set(words)) != len(words) or any(not w or len(w.split()) != 1 for w in words):
            raise UserError(f"a phrase encoder's vocabulary is a non-empty list of distinct single words, got {list(vocabulary)[:20]}")
        self.words, self.max_words = tuple(words), int(max_words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.unknown = len(self.words)
        self.embed = nn.Embedding(len(self.words) + 1, embed_dim)
        self.score = nn.Embedding(len(self.words) + 1, 1)
        nn.init.zeros_(self.score.weight)  # the pool starts as the mean of the words
        self.proj = nn.Linear(embed_dim, embed_dim)

    def extra_repr(self) -> str:
        return f"words={len(self.words)}, max_words={self.max_words}"

    def tokens(self, phrases: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Word ids ``(P, L)`` long and their mask ``(P, L)`` bool (``L``: the longest phrase's word count)."""
        rows = []
        for text in phrases:
            words = phrase_words(text)
            if not words:
                raise UserError(f"a box's phrase is empty ({text!r}); give each box a few words, e.g. 'a red seven'")
            if len(words) > self.max_words:
                raise UserError(f"the phrase {text[:60]!r}{'...' if len(text) > 60 else ''} has {len(words)} words; this model's phrase "
                                f"encoder reads at most {self.max_words} (shorten it)")
            for w in words:
                if w not in self.index and w not in _WARNED:
                    _WARNED.add(w)
                    log.warning("the word %r is not in this model's vocabulary; it reads as an unknown word (known: %s)",
                                w[:40], ", ".join(self.words))
            rows.append([self.index.get(w, self.unknown) for w in words])
        length = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), length), self.unknown, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
        return ids.to(self.embed.weight.device), mask.to(self.embed.weight.device)

    def forward(self, phrases: Sequence[str]) -> torch.Tensor:
        """``P`` phrases -> ``(P, D)`` prompt vectors."""
        ids, mask = self.tokens(phrases)
        score = self.score(ids)[..., 0].float().masked_fill(~mask, float("-inf"))  # (P, L)
        weight = score.softmax(-1).to(self.embed.weight.dtype)
        pooled = (weight[..., None] * self.embed(ids)).sum(1)  # (P, E)
        return self.proj(pooled)
