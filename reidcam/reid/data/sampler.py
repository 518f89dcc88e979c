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

from collections import defaultdict
from collections.abc import Iterator, Sequence

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
        self.set_epoch(0)

    @property
    def local_batch_size(self) -> int:
        """Images per batch on this rank."""
        return self.p // self.world_size * self.k

    @property
    def batches_per_epoch(self) -> int:
        return self._length // self.local_batch_size

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields (the count of batches may vary slightly)."""
        self.epoch = epoch
        self._length = len(self._global_batches(self._rng())) * self.local_batch_size

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch))

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
        rng = self._rng()
        share = self.p // self.world_size
        for batch in self._global_batches(rng):
            for chunk in batch[self.rank * share:(self.rank + 1) * share]:
                yield from (int(i) for i in chunk)

    def __len__(self) -> int:
        return self._length
