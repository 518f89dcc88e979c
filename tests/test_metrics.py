"""CMC / mAP / mINP under the standard protocol, and k-reciprocal re-ranking."""

from __future__ import annotations

import numpy as np
import pytest

from reidcam.reid.engine import metrics as metrics_module
from reidcam.reid.engine.metrics import cosine_distances, evaluate_rankings
from reidcam.reid.engine.rerank import k_reciprocal_rerank


def brute_force(distances, q_pids, g_pids, q_cams, g_cams, max_rank=50):
    """One query at a time, as the protocol is written down."""
    aps, inps, cmcs = [], [], []
    for q in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda g: (distances[q, g], g))
        ranked = [g for g in order if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]
        hits = [rank for rank, g in enumerate(ranked, start=1) if g_pids[g] == q_pids[q]]
        if not hits:
            continue
        aps.append(sum((i + 1) / rank for i, rank in enumerate(hits)) / len(hits))
        inps.append(len(hits) / hits[-1])
        cmcs.append([1.0 if hits[0] <= k else 0.0 for k in range(1, max_rank + 1)])
    return np.mean(aps), np.mean(inps), np.mean(cmcs, axis=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_metrics_equal_brute_force(seed, monkeypatch):
    monkeypatch.setattr(metrics_module, "QUERY_BLOCK", 7)  # several blocks
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, 6, 20), rng.integers(0, 6, 60)
    q_cams, g_cams = rng.integers(0, 3, 20), rng.integers(0, 3, 60)
    distances = rng.random((20, 60))
    distances[:, ::5] = distances[:, 1::5]  # ties: broken by gallery order
    result = evaluate_rankings(distances, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    ap, inp, cmc = brute_force(distances, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    assert result.mAP == pytest.approx(ap) and result.mINP == pytest.approx(inp)
    np.testing.assert_allclose(result.cmc, cmc)


def test_hand_worked_query():
    # gallery ordered by distance: g0 wrong, g1 same pid+same camera (removed), g2 match, g3 wrong, g4 match
    distances = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids = np.array([7, 1, 1, 9, 1])
    g_cams = np.array([0, 0, 1, 1, 2])
    result = evaluate_rankings(distances, np.array([1]), g_pids, np.array([0]), g_cams)
    # after removal the matches are at ranks 2 and 4
    assert result.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert result.mINP == pytest.approx(2 / 4)
    assert result.rank(1) == 0.0 and result.rank(2) == 1.0 and result.rank(10) == 1.0
    percent = result.as_percent_dict()
    assert percent["mAP"] == pytest.approx(50.0) and percent["rank5"] == 100.0


def test_queries_without_a_cross_camera_match_are_skipped():
    distances = np.array([[0.1, 0.2], [0.2, 0.1]])
    result = evaluate_rankings(distances, np.array([1, 2]), np.array([1, 2]), np.array([0, 0]), np.array([1, 0]))
    assert result.num_valid_queries == 1 and result.mAP == 1.0
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rankings(distances, np.array([3, 4]), np.array([1, 2]), np.array([0, 0]), np.array([1, 0]))


def test_distractors_never_match():
    distances = np.array([[0.1, 0.2, 0.3]])
    result = evaluate_rankings(distances, np.array([5]), np.array([0, 0, 5]), np.array([0]), np.array([1, 2, 1]))
    assert result.mAP == pytest.approx(1 / 3) and result.rank(3) == 1.0 and result.rank(2) == 0.0


def test_cosine_distances():
    q = np.array([[1.0, 0.0], [0.0, 2.0]])
    g = np.array([[3.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_distances(q, g), [[0.0, 1 - 1 / np.sqrt(2)], [1.0, 1 - 1 / np.sqrt(2)]])


def dense_rerank(query, gallery, k1=20, k2=6, lam=0.3):
    """Dense, loop-based k-reciprocal re-ranking straight from Zhong et al. (CVPR 2017)."""
    features = np.concatenate([query, gallery]).astype(np.float64)
    n, nq = len(features), len(query)
    squared = ((features[:, None, :] - features[None, :, :]) ** 2).sum(-1)
    original = squared / squared.max(axis=1, keepdims=True)
    ranks = np.argsort(original, axis=1, kind="stable")

    def reciprocal(i, k):
        forward = ranks[i, :k + 1]
        return np.array([j for j in forward if i in ranks[j, :k + 1]])

    V = np.zeros((n, n))
    for i in range(n):
        base = reciprocal(i, k1)
        expanded = set(base.tolist())
        for candidate in base:
            cand = reciprocal(candidate, int(np.around(k1 / 2)))
            if len(set(cand.tolist()) & set(base.tolist())) > 2 / 3 * len(cand):
                expanded |= set(cand.tolist())
        members = np.array(sorted(expanded))
        weights = np.exp(-original[i, members])
        V[i, members] = weights / weights.sum()
    V = np.stack([V[ranks[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.array([[1 - np.minimum(V[i], V[j]).sum() / np.maximum(V[i], V[j]).sum()
                         for j in range(nq, n)] for i in range(nq)])
    return (1 - lam) * jaccard + lam * original[:nq, nq:]


def test_rerank_equals_dense_reference():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 16))
    features = centres[rng.integers(0, 6, 50)] + 0.6 * rng.normal(size=(50, 16))
    query, gallery = features[:12], features[12:]
    result = k_reciprocal_rerank(query, gallery, k1=8, k2=3)
    np.testing.assert_allclose(result, dense_rerank(query, gallery, k1=8, k2=3), atol=1e-5)


def test_rerank_with_lambda_one_keeps_original_order():
    rng = np.random.default_rng(1)
    query, gallery = rng.normal(size=(5, 8)), rng.normal(size=(30, 8))
    result = k_reciprocal_rerank(query, gallery, lambda_value=1.0)
    squared = ((query[:, None] - gallery[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(np.argsort(result, axis=1), np.argsort(squared, axis=1))


def test_rerank_helps_on_clustered_data():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(10, 32))
    pids = np.repeat(np.arange(10), 12)
    features = centres[pids] + 0.9 * rng.normal(size=(120, 32))
    cams = np.tile(np.arange(4), 30)
    is_query = np.zeros(120, dtype=bool)
    is_query[::12] = True
    args = (pids[is_query], pids[~is_query], cams[is_query], cams[~is_query])
    plain = evaluate_rankings(cosine_distances(features[is_query], features[~is_query]), *args)
    reranked = evaluate_rankings(k_reciprocal_rerank(features[is_query], features[~is_query]), *args)
    assert reranked.mAP > plain.mAP


def test_blockwise_feature_evaluation_equals_full_cosine_matrix(monkeypatch):
    monkeypatch.setattr(metrics_module, "QUERY_BLOCK", 5)
    rng = np.random.default_rng(4)
    q, g = rng.normal(size=(17, 8)), rng.normal(size=(40, 8))
    labels = (rng.integers(0, 5, 17), rng.integers(0, 5, 40), rng.integers(0, 2, 17), rng.integers(0, 2, 40))
    full = evaluate_rankings(cosine_distances(q, g), *labels)
    blockwise = metrics_module.evaluate_features(q, g, *labels)
    assert blockwise.mAP == pytest.approx(full.mAP, abs=1e-6) and blockwise.mINP == pytest.approx(full.mINP, abs=1e-6)
    np.testing.assert_allclose(blockwise.cmc, full.cmc)
