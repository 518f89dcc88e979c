"""P x K identity sampling: every batch holds P identities with K images each, identity-major.

One epoch: each identity's images are shuffled and cut into chunks of K (an identity with fewer
than K images is filled up by drawing with replacement; a last partial chunk is dropped). Then,
while at least P identities still have chunks, P of them are drawn without replacement and one
chunk of each goes into the batch. Batches are therefore always complete, and the K images of
an identity are consecutive — the layout the triplet and RATR losses expect.

Everything is drawn from ``numpy.random.default_rng((seed, epoch))``, so the order depends only on
(seed, epoch): a resumed run and every DDP rank see the same global sequence. Under DDP each
iteration's P identities are split into ``world_size`` disjoint shares of P / world_size
identities; rank r takes share r, so one process yields exactly what the plain sampler yields.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from reidcam.errors import ConfigError


def group_by_identity(pids: Sequence[int]) -> dict[int, list[int]]:
    """Dataset indices of each identity, identities in sorted order."""
    groups: dict[int, list[int]] = defaultdict(list)
    for index, pid in enumerate(pids):
        groups[int(pid)].append(index)
    return dict(sorted(groups.items()))


class PKSampler(Sampler[int]):
    """Yields dataset indices for batches of ``p`` identities x ``k`` images (this rank's share)."""

    def __init__(
        self,
        pids: Sequence[int],
        p: int = 16,
        k: int = 4,
        seed: int = 777,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if p < 1 or k < 1:
            raise ConfigError(f"P and K must be positive, got P={p}, K={k}")
        if p % world_size:
            raise ConfigError(f"P={p} identities per batch cannot be split over {world_size} processes")
        self.groups = group_by_identity(pids)
        if len(self.groups) < p:
            raise ConfigError(f"the training set has {len(self.groups)} identities, fewer than P={p}")
        self.p, self.k, self.seed = p, k, seed
        self.rank, self.world_size = rank, world_size
        self._batch_counts: dict[int, int] = {}
        self.set_epoch(0)

    @property
    def local_batch_size(self) -> int:
        """Images per batch on this rank."""
        return self.p // self.world_size * self.k

    @property
    def batches_per_epoch(self) -> int:
        return self.batches_in(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields (the count of batches may vary slightly)."""
        self.epoch = epoch

    def batches_in(self, epoch: int) -> int:
        """Batches of ``epoch`` (this rank's as every rank's: each takes its share of every batch)."""
        if epoch not in self._batch_counts:
            self._batch_counts[epoch] = len(self._global_batches(self._rng(epoch)))
        return self._batch_counts[epoch]

    def indices(self, epoch: int) -> Iterator[int]:
        """This rank's dataset indices of ``epoch``, batch after batch."""
        share = self.p // self.world_size
        for batch in self._global_batches(self._rng(epoch)):
            for chunk in batch[self.rank * share:(self.rank + 1) * share]:
                yield from (int(i) for i in chunk)

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, epoch))

    def _chunks(self, rng: np.random.Generator) -> dict[int, list[np.ndarray]]:
        chunks = {}
        for pid, indices in self.groups.items():
            pool = np.asarray(indices)
            if len(pool) < self.k:
                pool = rng.choice(pool, size=self.k, replace=True)
            pool = rng.permutation(pool)
            usable = len(pool) // self.k * self.k
            chunks[pid] = list(pool[:usable].reshape(-1, self.k))
        return chunks

    def _global_batches(self, rng: np.random.Generator) -> list[list[np.ndarray]]:
        """Each batch: P chunks of K indices, one chunk per distinct identity."""
        chunks = self._chunks(rng)
        available = [pid for pid, c in chunks.items() if c]
        batches = []
        while len(available) >= self.p:
            chosen = rng.choice(len(available), size=self.p, replace=False)
            batch = []
            for position in chosen:
                batch.append(chunks[available[position]].pop(0))
            batches.append(batch)
            available = [pid for pid in available if chunks[pid]]
        return batches

    def __iter__(self) -> Iterator[int]:
        return self.indices(self.epoch)

    def __len__(self) -> int:
        return self.batches_in(self.epoch) * self.local_batch_size


class EpochStream(Sampler[int]):
    """The indices of several epochs of a ``PKSampler`` back to back, each cut to its first ``batches(epoch)`` batches.

    Why one stream: a DataLoader makes batches ahead only within one iterator, so with an iterator per epoch the
    GPU waited at every epoch's start while the workers made its first batches (~190 ms on an H200, 7 % of a
    63-step epoch: BENCHMARKS.md, session 17). Over one stream the workers make the next epoch's first batches
    while this epoch's last ones train.
    """

    def __init__(self, sampler: PKSampler, epochs: range, batches: Callable[[int], int]) -> None:
        self.sampler, self.epochs, self.batches = sampler, epochs, batches

    def __iter__(self) -> Iterator[int]:
        for epoch in self.epochs:
            yield from itertools.islice(self.sampler.indices(epoch), self.batches(epoch) * self.sampler.local_batch_size)

    def __len__(self) -> int:
        return sum(self.batches(epoch) for epoch in self.epochs) * self.sampler.local_batch_size
