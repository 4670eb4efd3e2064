"""A DataLoader whose shuffle order is a function of (seed, epoch) and whose position is saved in
Lightning checkpoints, so a run resumed mid-epoch sees exactly the batches an uninterrupted run would."""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochSeededSampler(Sampler[int]):
    """Random permutation of ``range(len(dataset))`` seeded by ``(seed, epoch)``; can skip a prefix."""

    def __init__(self, dataset: Dataset, seed: int = 0, shuffle: bool = True):
        self.n = len(dataset)  # type: ignore[arg-type]
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        skip, self.skip = self.skip, 0
        return iter(order[skip:])


class ResumableDataLoader(DataLoader):
    """``DataLoader`` with ``state_dict``/``load_state_dict`` (Lightning saves them in checkpoints).

    State: the epoch and the number of batches already consumed in it. Under DDP Lightning swaps in
    its own ``DistributedSampler`` (epoch-seeded too); the position is then not restored.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 1, shuffle: bool = True, seed: int = 0, **kwargs: Any):
        sampler = kwargs.pop("sampler", None) or EpochSeededSampler(dataset, seed, shuffle)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self._epoch = 0
        self._consumed = 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        if self._resume is not None:
            self._epoch, self._consumed = self._resume
            self._resume = None
        else:
            self._consumed = 0
        if isinstance(sampler, EpochSeededSampler):
            sampler.epoch = self._epoch
            sampler.skip = self._consumed * (self.batch_size or 1)
        for batch in super().__iter__():
            self._consumed += 1
            yield batch
        self._epoch += 1
        self._consumed = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "consumed": self._consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (int(state["epoch"]), int(state["consumed"]))
