"""Cross-camera association: tracklets in, global identities out, online.

A tracklet is associated once it is *ready*: it has ``min_crops`` good crop embeddings, or it has
ended. All tracklets ready at the same step are assigned jointly with the Hungarian method,
against the gallery and against one "new identity" option each, priced at the threshold; a
match therefore needs a cosine distance below the threshold, and one identity goes to one
tracklet at most.

Constraints (an infeasible pair is never matched, whatever its distance):

* same moment: an identity is not in two places at once: not in two tracks of one camera, and
  not in two cameras, unless the topology says their views overlap (``overlap_tolerance_s`` of
  clock slack between cameras);
* transit (modes ``combined`` and ``spacetime``): the hop from the identity's previous camera to
  this one, and from this one to its next, takes a time the topology allows (without a
  topology, ``association.min/max_transit_s``); with a topology, only linked cameras are
  neighbours.

Modes: ``combined`` (appearance and both constraints, the default), ``appearance`` (appearance
and the same-moment rule only), ``spacetime`` (no appearance at all: a tracklet starting in one
camera is linked to an identity last seen shortly before in another camera, Hungarian on the gap;
a baseline).

At the end of a run ``refine`` splits off tracklets that look unlike the rest of their identity
and merges identities that look alike and never conflict. Every assignment, creation, merge and
split is returned as an ``IdentityEvent`` for the store's log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.optimize import linear_sum_assignment

from reidcam.app.config import AssociationConfig, TopologyLink
from reidcam.tracking.gallery import Gallery, Identity, cosine_distance, cosine_distances
from reidcam.tracking.tracklets import Tracklet

logger = logging.getLogger(__name__)

INFEASIBLE = 1e6
SPACETIME_DEFAULT_MAX_TRANSIT_S = 10.0
SAME_CAMERA_SLACK_S = 1e-6


@dataclass(frozen=True)
class IdentityEvent:
    """One change to the identities, as logged in the store.

    kind: ``create`` (a tracklet starts a new identity), ``assign`` (a tracklet joins one),
    ``merge`` (``other_global_id`` is absorbed into ``global_id``), ``split`` (a tracklet leaves
    ``other_global_id`` for the new ``global_id``).
    """

    kind: str
    global_id: int
    time: float
    tracklet: Tracklet | None = None
    other_global_id: int | None = None
    distance: float | None = None


@dataclass(frozen=True)
class IdentityAssignment:
    """The decision for one ready tracklet."""

    tracklet: Tracklet
    identity: Identity | None  # None: a new identity
    distance: float | None


class Topology:
    """Which cameras people pass between, in what time, and which views overlap."""

    def __init__(self, links: Sequence[TopologyLink], config: AssociationConfig) -> None:
        self._links = {frozenset(link.between): link for link in links}
        self._default_max = config.max_transit_s
        self._default_min = config.min_transit_s
        if config.mode == "spacetime" and self._default_max is None:
            self._default_max = SPACETIME_DEFAULT_MAX_TRANSIT_S

    @property
    def given(self) -> bool:
        return bool(self._links)

    def views_overlap(self, camera_a: str, camera_b: str) -> bool:
        link = self._links.get(frozenset((camera_a, camera_b)))
        return link is not None and link.overlap

    def transit_window(self, camera_a: str, camera_b: str) -> tuple[float, float] | None:
        """Allowed seconds between leaving one camera and entering the other; None if no direct path."""
        if not self.given:
            return self._default_min, self._default_max if self._default_max is not None else float("inf")
        link = self._links.get(frozenset((camera_a, camera_b)))
        if link is None:
            return None
        return link.min_transit_s, link.max_transit_s


class Associator:
    """Assigns ready tracklets to global identities and keeps the gallery."""

    def __init__(self, config: AssociationConfig, topology: Topology, gallery: Gallery | None = None) -> None:
        self.config = config
        self.topology = topology
        self.gallery = gallery or Gallery()
        self.uses_appearance = config.mode != "spacetime"
        self.uses_transit = config.mode != "appearance"

    def is_ready(self, tracklet: Tracklet) -> bool:
        if tracklet.global_id is not None:
            return False
        if not self.uses_appearance:
            return tracklet.boxes >= self.config.min_tracklet_frames
        return tracklet.crops >= self.config.min_crops or tracklet.closed

    def associate(self, tracklets: Sequence[Tracklet]) -> list[IdentityEvent]:
        """Assign the ready ones among ``tracklets`` jointly; returns the events."""
        ready = [tracklet for tracklet in tracklets if self.is_ready(tracklet)]
        if not ready:
            return []
        events = []
        for assignment in self._solve(ready):
            event = self._apply(assignment)
            if event is not None:
                events.append(event)
        return events

    def _solve(self, ready: list[Tracklet]) -> list[IdentityAssignment]:
        """Hungarian over [identities | one 'new' column per tracklet]."""
        identities = self.gallery.active()
        costs = np.full((len(ready), len(identities) + len(ready)), INFEASIBLE)
        costs[:, : len(identities)] = self._identity_costs(ready, identities)
        costs[np.arange(len(ready)), len(identities) + np.arange(len(ready))] = self._new_identity_cost()
        rows, columns = linear_sum_assignment(costs)
        assignments = []
        for row, column in zip(rows, columns):
            tracklet = ready[row]
            if column < len(identities) and costs[row, column] < self._new_identity_cost():
                assignments.append(IdentityAssignment(tracklet, identities[column], float(costs[row, column])))
            else:
                assignments.append(IdentityAssignment(tracklet, None, None))
        return assignments

    def _identity_costs(self, ready: list[Tracklet], identities: list[Identity]) -> np.ndarray:
        """Each ready tracklet's cost of joining each identity, INFEASIBLE where it may not.

        With appearance, every distance comes from one matrix product and only the pairs under the threshold
        are checked in space and time: a run's gallery grows by the hour, and pricing one pair at a time cost
        ~25 µs per identity at every association (75 ms a step at 3,000 identities, bench/association.py).
        """
        costs = np.full((len(ready), len(identities)), INFEASIBLE)
        if not self.uses_appearance:
            for row, tracklet in enumerate(ready):
                for column, identity in enumerate(identities):
                    if self.feasible(tracklet, identity):
                        costs[row, column] = self._spacetime_gap(tracklet, identity)
            return costs
        distances = cosine_distances([t.embedding for t in ready], [i.embedding() for i in identities])
        for row, column in zip(*np.nonzero(distances < self.config.threshold)):
            if self.feasible(ready[row], identities[column]):
                costs[row, column] = distances[row, column]
        return costs

    def _apply(self, assignment: IdentityAssignment) -> IdentityEvent | None:
        tracklet = assignment.tracklet
        if assignment.identity is not None:
            self.gallery.attach(tracklet, assignment.identity)
            return IdentityEvent(
                "assign", tracklet.global_id, tracklet.last_time, tracklet, distance=assignment.distance
            )
        if tracklet.boxes < self.config.min_tracklet_frames:
            return None  # too short to be anyone yet: wait for more frames, or stay unassigned
        identity = self.gallery.create(tracklet)
        return IdentityEvent("create", identity.global_id, tracklet.last_time, tracklet)

    def _new_identity_cost(self) -> float:
        if self.uses_appearance:
            return self.config.threshold
        return INFEASIBLE / 2

    def feasible(self, tracklet: Tracklet, identity: Identity) -> bool:
        """Whether ``tracklet`` may belong to ``identity`` under the same-moment and transit rules."""
        others = [other for other in identity.tracklets if other is not tracklet]
        if any(self._same_moment(tracklet, other) for other in others):
            return False
        if not self.uses_transit:
            return True
        before = [o for o in others if o.last_time < tracklet.first_time]
        after = [o for o in others if o.first_time > tracklet.last_time]
        if not self.uses_appearance and (not before or after):
            return False  # spacetime links a start to an end seen shortly before, nothing else
        previous = max(before, key=lambda o: o.last_time, default=None)
        following = min(after, key=lambda o: o.first_time, default=None)
        if previous is not None and not self._transit_ok(previous, tracklet):
            return False
        return following is None or self._transit_ok(tracklet, following)

    def _same_moment(self, tracklet: Tracklet, other: Tracklet) -> bool:
        shared = tracklet.shared_time(other)
        if tracklet.camera_id == other.camera_id:
            return shared > -SAME_CAMERA_SLACK_S
        if self.topology.views_overlap(tracklet.camera_id, other.camera_id):
            return False
        return shared > self.config.overlap_tolerance_s

    def _transit_ok(self, earlier: Tracklet, later: Tracklet) -> bool:
        if earlier.camera_id == later.camera_id:
            return True  # back in the same camera: a re-entry, any gap
        window = self.topology.transit_window(earlier.camera_id, later.camera_id)
        if window is None:
            return False
        gap = later.first_time - earlier.last_time
        return window[0] <= gap <= window[1]

    def _spacetime_gap(self, tracklet: Tracklet, identity: Identity) -> float:
        previous = max((o for o in identity.tracklets if o.last_time < tracklet.first_time), key=lambda o: o.last_time)
        if previous.camera_id == tracklet.camera_id:
            return INFEASIBLE
        return tracklet.first_time - previous.last_time

    def refine(self) -> list[IdentityEvent]:
        """End of run: split stray tracklets off, then merge look-alike identities that never conflict."""
        if not self.uses_appearance or not self.config.refine:
            return []
        return self._split_strays() + self._merge_lookalikes()

    def _split_strays(self) -> list[IdentityEvent]:
        events = []
        for identity in list(self.gallery.active()):
            while len(identity.tracklets) > 1:
                stray = self._worst_tracklet(identity)
                if stray is None:
                    break
                distance, tracklet = stray
                self.gallery.detach(tracklet)
                new = self.gallery.create(tracklet)
                events.append(
                    IdentityEvent("split", new.global_id, tracklet.last_time, tracklet, identity.global_id, distance)
                )
                logger.info(
                    "split tracklet %s off identity %d into %d (distance %.3f)",
                    tracklet.key,
                    identity.global_id,
                    new.global_id,
                    distance,
                )
        return events

    def _worst_tracklet(self, identity: Identity) -> tuple[float, Tracklet] | None:
        """The tracklet farthest from the rest of its identity, if beyond the split threshold.

        Between two tracklets the distance is symmetric; the later one is then the one that
        joined, and the one to go.
        """
        candidates = []
        for tracklet in identity.tracklets:
            mine, rest = tracklet.embedding, identity.embedding(excluding=tracklet)
            if mine is None or rest is None:
                continue
            distance = cosine_distance(mine, rest)
            if distance > self.config.split_threshold:
                candidates.append((round(distance, 6), tracklet.first_time, distance, tracklet))
        if not candidates:
            return None
        _, _, distance, tracklet = max(candidates, key=lambda item: item[:2])
        return distance, tracklet

    def _merge_lookalikes(self) -> list[IdentityEvent]:
        embeddings = {i.global_id: i.embedding() for i in self.gallery.active()}
        pairs = sorted(
            (cosine_distance(embeddings[a], embeddings[b]), a, b)
            for a, b in combinations(sorted(embeddings), 2)
            if embeddings[a] is not None and embeddings[b] is not None
        )
        events = []
        for _, a, b in pairs:
            keep, absorbed = self._current(a), self._current(b)
            if keep is absorbed:
                continue
            if keep.global_id > absorbed.global_id:
                keep, absorbed = absorbed, keep
            distance = cosine_distance(keep.embedding(), absorbed.embedding())
            if distance >= self.config.merge_threshold or not self._mergeable(keep, absorbed):
                continue
            time = max(keep.last_seen(), absorbed.last_seen())
            self.gallery.merge(keep, absorbed)
            events.append(IdentityEvent("merge", keep.global_id, time, None, absorbed.global_id, distance))
            logger.info("merged identity %d into %d (distance %.3f)", absorbed.global_id, keep.global_id, distance)
        return events

    def _current(self, global_id: int) -> Identity:
        identity = self.gallery.identities[global_id]
        while identity.merged_into is not None:
            identity = self.gallery.identities[identity.merged_into]
        return identity

    def _mergeable(self, keep: Identity, absorbed: Identity) -> bool:
        trial = Identity(global_id=-1, tracklets=list(keep.tracklets))
        for tracklet in sorted(absorbed.tracklets, key=lambda t: t.first_time):
            if not self.feasible(tracklet, trial):
                return False
            trial.tracklets.append(tracklet)
        return True
