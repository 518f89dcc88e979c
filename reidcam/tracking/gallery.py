"""The gallery of global identities: each one a set of tracklets, across cameras.

An identity's appearance is the quality-weighted mean over all crops of all its tracklets, read
from the tracklets, so it follows them as they grow; once all of them have ended it can no longer
change until the identity gains or loses a tracklet, so it is kept until then (a long run's gallery
holds thousands of such identities, each read at every association). Global ids count from 1 within
a run and are never reused; an identity absorbed by a merge keeps its id, marked ``merged_into``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from reidcam.tracking.tracklets import Tracklet, normalised


@dataclass
class Identity:
    global_id: int
    tracklets: list[Tracklet] = field(default_factory=list)
    merged_into: int | None = None
    _settled: tuple[np.ndarray | None] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def active(self) -> bool:
        return self.merged_into is None

    @property
    def cameras(self) -> set[str]:
        return {tracklet.camera_id for tracklet in self.tracklets}

    def embedding(self, excluding: Tracklet | None = None) -> np.ndarray | None:
        """The identity's appearance, optionally without one of its tracklets (to test that one against the rest)."""
        if excluding is None and self._settled is not None:
            return self._settled[0]
        sums = [t.embedding_sum for t in self.tracklets if t is not excluding and t.embedding_sum is not None]
        vector = normalised(np.sum(sums, axis=0)) if sums else None
        if excluding is None and all(t.closed for t in self.tracklets):
            self._settled = (vector,)
        return vector

    def tracklets_changed(self) -> None:
        """Call after adding or removing tracklets: the kept appearance no longer holds."""
        self._settled = None

    def last_seen(self) -> float:
        return max(tracklet.last_time for tracklet in self.tracklets)


class Gallery:
    """All identities of a run."""

    def __init__(self) -> None:
        self.identities: dict[int, Identity] = {}
        self._next_id = 1

    def active(self) -> list[Identity]:
        return [identity for identity in self.identities.values() if identity.active]

    def create(self, tracklet: Tracklet) -> Identity:
        identity = Identity(self._next_id)
        self._next_id += 1
        self.identities[identity.global_id] = identity
        self.attach(tracklet, identity)
        return identity

    def attach(self, tracklet: Tracklet, identity: Identity) -> None:
        identity.tracklets.append(tracklet)
        identity.tracklets_changed()
        tracklet.global_id = identity.global_id

    def detach(self, tracklet: Tracklet) -> None:
        identity = self.identities[tracklet.global_id]
        identity.tracklets.remove(tracklet)
        identity.tracklets_changed()
        tracklet.global_id = None

    def merge(self, keep: Identity, absorbed: Identity) -> None:
        for tracklet in absorbed.tracklets:
            self.attach(tracklet, keep)
        absorbed.tracklets = []
        absorbed.tracklets_changed()
        absorbed.merged_into = keep.global_id


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cos between two L2-normalised vectors: 0 same direction, 2 opposite."""
    return float(1.0 - np.dot(a, b))


def cosine_distances(rows: Sequence[np.ndarray | None], columns: Sequence[np.ndarray | None]) -> np.ndarray:
    """``cosine_distance`` of every (row, column) pair in one matrix product; +inf where either vector is None."""
    distances = np.full((len(rows), len(columns)), np.inf)
    present_rows = [i for i, vector in enumerate(rows) if vector is not None]
    present_columns = [j for j, vector in enumerate(columns) if vector is not None]
    if present_rows and present_columns:
        products = np.stack([rows[i] for i in present_rows]) @ np.stack([columns[j] for j in present_columns]).T
        distances[np.ix_(present_rows, present_columns)] = 1.0 - products
    return distances
