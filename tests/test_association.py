"""Cross-camera association: thresholds, joint assignment, same-moment and transit rules, modes, refinement."""

from __future__ import annotations

import numpy as np
import pytest

from reidcam.app.config import AssociationConfig, TopologyLink
from reidcam.tracking.association import Associator, Topology
from reidcam.tracking.tracklets import Tracklet

DIM = 16


def unit(*weights: float) -> np.ndarray:
    vector = np.zeros(DIM)
    vector[: len(weights)] = weights
    return vector / np.linalg.norm(vector)


def tracklet(
    camera: str, local_id: int, start: float, end: float, vector: np.ndarray | None, crops: int = 3
) -> Tracklet:
    item = Tracklet(camera, local_id, first_frame=int(start * 10) + 1, first_time=start)
    item.observe(int(end * 10) + 1, end)
    item.boxes = max(int((end - start) * 10), 1) + 1
    for _ in range(crops if vector is not None else 0):
        item.add_embedding(vector, quality=1.0)
    return item


def unit_of(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def associator(mode: str = "combined", links: list[dict] | None = None, **settings) -> Associator:
    config = AssociationConfig(mode=mode, **settings)
    return Associator(config, Topology([TopologyLink(**link) for link in links or []], config))


def seed(assoc: Associator, *tracklets: Tracklet) -> list[int]:
    """Give each tracklet its own identity (one at a time, so none can join another)."""
    ids = []
    for item in tracklets:
        (event,) = assoc.associate([item])
        ids.append(event.global_id)
    return ids


def test_close_appearance_joins_far_appearance_creates():
    assoc = associator(threshold=0.3)
    (first,) = seed(assoc, tracklet("cam1", 1, 0, 5, unit(1, 0)))
    near = tracklet("cam2", 1, 8, 12, unit(1, 0.3))  # cosine distance 0.042
    far = tracklet("cam2", 2, 20, 24, unit(0, 1))  # distance 1
    (joined,) = assoc.associate([near])
    (created,) = assoc.associate([far])
    assert (joined.kind, joined.global_id) == ("assign", first)
    assert joined.distance == pytest.approx(1 - 1 / np.sqrt(1.09), abs=1e-6)
    assert created.kind == "create" and created.global_id not in (first,)
    assert near.global_id == first and far.global_id == created.global_id


def at_angle(degrees: float) -> np.ndarray:
    radians = np.deg2rad(degrees)
    return unit(np.cos(radians), np.sin(radians))


def test_tracklets_maturing_together_are_assigned_jointly():
    # on a circle: B at 0, T1 at 17, A at 30, T2 at 50 degrees. Greedy gives T1 its best (A, 0.026)
    # and leaves T2 nothing under the threshold (B is 0.357 away): total 0.026 + 0.3 for a new
    # identity. Jointly, T1 -> B (0.044) and T2 -> A (0.060) cost 0.104.
    assoc = associator(threshold=0.3)
    id_a, id_b = seed(assoc, tracklet("cam1", 1, 0, 5, at_angle(30)), tracklet("cam1", 2, 0, 5, at_angle(0)))
    assert id_a != id_b  # same camera, same time: two people
    t1 = tracklet("cam2", 1, 10, 12, at_angle(17))
    t2 = tracklet("cam3", 1, 13, 15, at_angle(50))
    events = assoc.associate([t1, t2])
    assert sorted(e.kind for e in events) == ["assign", "assign"]
    assert (t1.global_id, t2.global_id) == (id_b, id_a)
    assert sum(e.distance for e in events) == pytest.approx(2 - np.cos(np.deg2rad(17)) - np.cos(np.deg2rad(20)))


def test_not_ready_until_enough_crops_or_closed():
    assoc = associator(min_crops=3)
    young = tracklet("cam1", 1, 0, 2, unit(1), crops=2)
    assert assoc.associate([young]) == []
    young.closed = True
    (event,) = assoc.associate([young])
    assert event.kind == "create"


def test_short_closed_tracklet_without_match_stays_unassigned():
    assoc = associator(min_tracklet_frames=5)
    blip = tracklet("cam1", 1, 0, 0.2, unit(1), crops=1)
    blip.closed = True
    assert blip.boxes < 5
    assert assoc.associate([blip]) == []
    assert blip.global_id is None and assoc.gallery.active() == []


def test_same_person_is_not_in_two_cameras_at_once_unless_views_overlap():
    for links, expected in (([], "create"), ([{"between": ["cam1", "cam2"], "overlap": True}], "assign")):
        assoc = associator("appearance", links=links)
        seed(assoc, tracklet("cam1", 1, 0, 10, unit(1)))
        (event,) = assoc.associate([tracklet("cam2", 1, 5, 12, unit(1))])
        assert event.kind == expected


def test_clock_slack_between_cameras_is_tolerated():
    assoc = associator("appearance", overlap_tolerance_s=0.5)
    (first,) = seed(assoc, tracklet("cam1", 1, 0, 10, unit(1)))
    (event,) = assoc.associate([tracklet("cam2", 1, 9.7, 15, unit(1))])
    assert event.global_id == first


def test_two_tracks_of_one_camera_at_once_are_two_people():
    assoc = associator("appearance")
    (first,) = seed(assoc, tracklet("cam1", 1, 0, 10, unit(1)))
    (event,) = assoc.associate([tracklet("cam1", 2, 10, 14, unit(1))])  # shares the instant t=10
    assert event.kind == "create"
    (later,) = assoc.associate([tracklet("cam1", 3, 10.5, 14, unit(1))])  # re-entry after the track ended
    assert later.global_id == first


@pytest.mark.parametrize(("start", "joins"), [(11.0, False), (15.0, True), (25.0, False)])
def test_transit_time_follows_the_topology(start, joins):
    links = [{"between": ["cam1", "cam2"], "min_transit_s": 2, "max_transit_s": 10}]
    assoc = associator("combined", links=links)
    (first,) = seed(assoc, tracklet("cam1", 1, 0, 10, unit(1)))
    later = tracklet("cam2", 1, start, start + 3, unit(1))
    assoc.associate([later])
    assert (later.global_id == first) is joins


def test_appearance_mode_ignores_transit_times():
    links = [{"between": ["cam1", "cam2"], "min_transit_s": 2, "max_transit_s": 10}]
    assoc = associator("appearance", links=links)
    (first,) = seed(assoc, tracklet("cam1", 1, 0, 10, unit(1)))
    later = tracklet("cam2", 1, 60, 63, unit(1))
    assoc.associate([later])
    assert later.global_id == first


def test_unlinked_cameras_are_not_neighbours_when_a_topology_is_given():
    assoc = associator("combined", links=[{"between": ["cam1", "cam2"]}])
    seed(assoc, tracklet("cam1", 1, 0, 10, unit(1)))
    (event,) = assoc.associate([tracklet("cam3", 1, 12, 15, unit(1))])
    assert event.kind == "create"


def test_spacetime_links_starts_to_recent_ends_by_smallest_total_gap():
    assoc = associator("spacetime", max_transit_s=5, min_tracklet_frames=3)
    id_a, id_b = seed(assoc, tracklet("cam1", 1, 0, 10, None), tracklet("cam1", 2, 2, 12, None))
    early = tracklet("cam2", 1, 12.5, 16, None)
    late = tracklet("cam2", 2, 13.0, 16, None)
    events = assoc.associate([early, late])
    assert sorted(e.kind for e in events) == ["assign", "assign"]
    # gaps: early-A 2.5, early-B 0.5, late-A 3.0, late-B 1.0 -> both assignments total 3.5;
    # either is optimal, but each start takes a different end
    assert {early.global_id, late.global_id} == {id_a, id_b}
    too_late = tracklet("cam3", 1, 30, 33, None)
    same_camera = tracklet("cam1", 3, 13, 16, None)
    assert [e.kind for e in assoc.associate([too_late])] == ["create"]
    assert [e.kind for e in assoc.associate([same_camera])] == ["create"]


def test_spacetime_prefers_the_closest_end():
    assoc = associator("spacetime", max_transit_s=5)
    id_a, id_b = seed(assoc, tracklet("cam1", 1, 0, 10, None), tracklet("cam1", 2, 2, 12, None))
    start = tracklet("cam2", 1, 12.5, 16, None)
    assoc.associate([start])
    assert start.global_id == id_b


def test_refine_merges_lookalikes_that_never_conflict_and_logs_it():
    assoc = associator("combined", threshold=0.05, merge_threshold=0.1)
    first = tracklet("cam1", 1, 0, 5, unit(1, 0.00))
    second = tracklet("cam2", 1, 8, 12, unit(1, 0.45))  # distance 0.088: beyond the online threshold
    clash = tracklet("cam3", 1, 1, 4, unit(1, -0.05))  # 0.001 from first, but in cam3 while first is in cam1
    id_first, id_second, id_clash = seed(assoc, first, second, clash)
    events = assoc.refine()
    merges = [e for e in events if e.kind == "merge"]
    assert [(e.global_id, e.other_global_id) for e in merges] == [(id_first, id_second)]
    assert second.global_id == id_first and clash.global_id == id_clash
    assert assoc.gallery.identities[id_second].merged_into == id_first


def test_refine_splits_a_tracklet_unlike_the_rest():
    assoc = associator("appearance", threshold=2.0, split_threshold=0.7)
    first = tracklet("cam1", 1, 0, 5, unit(1, 0))
    stray = tracklet("cam2", 1, 8, 12, unit(-1, 0.2))
    (identity,) = seed(assoc, first)
    assoc.associate([stray])
    assert stray.global_id == identity
    events = assoc.refine()
    splits = [e for e in events if e.kind == "split"]
    assert len(splits) == 1 and splits[0].other_global_id == identity and splits[0].tracklet is stray
    assert stray.global_id == splits[0].global_id != identity


def test_a_settled_identity_keeps_its_appearance_until_its_tracklets_change():
    assoc = associator()
    gallery = assoc.gallery
    first, second = tracklet("cam1", 1, 0, 5, unit(1, 0)), tracklet("cam2", 1, 8, 12, unit(1, 1))
    identity = gallery.create(first)
    live = identity.embedding()
    first.add_embedding(unit(0, 1), quality=1.0)  # an open tracklet's appearance still grows
    assert not np.allclose(identity.embedding(), live)
    first.closed = True
    settled = identity.embedding()
    assert identity.embedding() is settled  # kept: its only tracklet has ended
    gallery.attach(second, identity)
    both = first.embedding_sum + second.embedding_sum
    np.testing.assert_allclose(identity.embedding(), both / np.linalg.norm(both), atol=1e-6)
    second.closed = True
    gallery.detach(second)
    np.testing.assert_allclose(identity.embedding(), settled)
    other = gallery.create(second)
    gallery.merge(identity, other)
    assert identity.embedding() is not settled and other.embedding() is None


def test_identity_costs_from_one_product_equal_the_pairwise_rule():
    """Distances of every ready tracklet to every identity at once, space and time checked only under the
    threshold: the same costs as pricing each pair on its own (cosine distance, feasibility)."""
    from reidcam.tracking.association import INFEASIBLE
    from reidcam.tracking.gallery import cosine_distance

    rng = np.random.default_rng(3)
    assoc = associator(threshold=0.5)
    base = rng.normal(size=DIM)
    for index in range(40):
        start = float(rng.uniform(0, 60))
        item = tracklet(f"cam{index % 4}", index + 1, start, start + 5, unit_of(base + rng.normal(scale=0.9, size=DIM)))
        item.closed = index % 3 > 0
        assoc.gallery.create(item)
    ready = [tracklet(f"cam{k}", 100 + k, 30 + k, 40 + k, unit_of(base + rng.normal(scale=0.9, size=DIM)))
             for k in range(4)]
    ready.append(tracklet("cam0", 200, 30, 40, None))  # no appearance yet: joins nobody
    identities = assoc.gallery.active()
    costs = assoc._identity_costs(ready, identities)
    joinable = 0
    for row, item in enumerate(ready):
        for column, identity in enumerate(identities):
            mine, theirs = item.embedding, identity.embedding()
            distance = cosine_distance(mine, theirs) if mine is not None and theirs is not None else np.inf
            ok = distance < 0.5 and assoc.feasible(item, identity)
            joinable += ok
            assert costs[row, column] == (pytest.approx(distance, abs=1e-6) if ok else INFEASIBLE)
    assert 0 < joinable < costs.size  # both outcomes are exercised
