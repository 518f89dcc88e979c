"""ReID retrieval metrics under the standard Market-1501 / DukeMTMC protocol.

For each query the gallery is ranked by distance; gallery images of the same identity seen by
the same camera are removed from that query's list (they are too easy), and a query left with
no true match is skipped. Over the remaining queries:

* CMC rank-k: fraction of queries whose first true match is within the top k.
* mAP: mean over queries of average precision over all true matches.
* mINP: mean over queries of (number of true matches) / (rank of the hardest true match)
  (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook").

All values are returned as fractions in [0, 1]; callers that report percentages multiply by 100.
Everything is computed in blocks of queries with numpy array operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUERY_BLOCK = 256


@dataclass(frozen=True)
class RetrievalMetrics:
    """Fractions in [0, 1]; ``cmc[k-1]`` is rank-k."""

    mAP: float
    mINP: float
    cmc: np.ndarray
    num_valid_queries: int

    def rank(self, k: int) -> float:
        return float(self.cmc[min(k, len(self.cmc)) - 1])

    def as_percent_dict(self) -> dict[str, float]:
        """mAP, rank1, rank5, rank10 and mINP in percent, as ReID papers report them."""
        return {
            "mAP": 100.0 * self.mAP,
            "rank1": 100.0 * self.rank(1),
            "rank5": 100.0 * self.rank(5),
            "rank10": 100.0 * self.rank(10),
            "mINP": 100.0 * self.mINP,
        }


def _block_metrics(
    distances: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_camids: np.ndarray,
    gallery_camids: np.ndarray,
    max_rank: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-query (valid, AP, INP, CMC row) for one block of queries."""
    order = np.argsort(distances, axis=1, kind="stable")
    ranked_pids = gallery_pids[order]
    same_pid = ranked_pids == query_pids[:, None]
    same_camera = gallery_camids[order] == query_camids[:, None]
    kept = ~(same_pid & same_camera)
    matches = same_pid & kept
    rank_among_kept = np.cumsum(kept, axis=1)  # 1-based rank at kept positions
    matches_so_far = np.cumsum(matches, axis=1)
    num_matches = matches_so_far[:, -1]
    valid = num_matches > 0
    safe_count = np.maximum(num_matches, 1)
    precision_at_hits = np.where(matches, matches_so_far / np.maximum(rank_among_kept, 1), 0.0)
    average_precision = precision_at_hits.sum(axis=1) / safe_count
    hardest_rank = np.where(matches, rank_among_kept, 0).max(axis=1)
    inverse_negative_penalty = num_matches / np.maximum(hardest_rank, 1)
    first_rank = np.where(matches, rank_among_kept, np.iinfo(np.int64).max).min(axis=1)
    cmc = first_rank[:, None] <= np.arange(1, max_rank + 1)[None, :]
    return valid, average_precision, inverse_negative_penalty, cmc


def _collect(blocks, max_rank: int) -> RetrievalMetrics:
    valid, aps, inps, cmcs = [], [], [], []
    for v, ap, inp, cmc in blocks:
        valid.append(v), aps.append(ap), inps.append(inp), cmcs.append(cmc)
    valid_mask = np.concatenate(valid) if valid else np.zeros(0, dtype=bool)
    if not valid_mask.any():
        raise ValueError("no query has a true match in the gallery (from another camera)")
    return RetrievalMetrics(
        mAP=float(np.concatenate(aps)[valid_mask].mean()),
        mINP=float(np.concatenate(inps)[valid_mask].mean()),
        cmc=np.concatenate(cmcs)[valid_mask].mean(axis=0),
        num_valid_queries=int(valid_mask.sum()),
    )


def evaluate_rankings(
    distances: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_camids: np.ndarray,
    gallery_camids: np.ndarray,
    max_rank: int = 50,
) -> RetrievalMetrics:
    """CMC, mAP and mINP of a (num_query, num_gallery) distance matrix (smaller = more similar)."""
    distances = np.asarray(distances)
    query_pids, gallery_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    query_camids, gallery_camids = np.asarray(query_camids), np.asarray(gallery_camids)
    if distances.shape != (len(query_pids), len(gallery_pids)):
        raise ValueError(f"distance matrix {distances.shape} does not match {len(query_pids)} queries "
                         f"x {len(gallery_pids)} gallery images")
    max_rank = max(1, min(max_rank, distances.shape[1]))
    blocks = (
        _block_metrics(distances[b], query_pids[b], gallery_pids, query_camids[b], gallery_camids, max_rank)
        for b in (slice(start, start + QUERY_BLOCK) for start in range(0, len(query_pids), QUERY_BLOCK))
    )
    return _collect(blocks, max_rank)


def evaluate_features(
    query_features: np.ndarray,
    gallery_features: np.ndarray,
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_camids: np.ndarray,
    gallery_camids: np.ndarray,
    max_rank: int = 50,
) -> RetrievalMetrics:
    """Same as ``evaluate_rankings`` on cosine distances, computed one block of queries at a time
    (MSMT17's full 11,659 x 82,161 matrix would take 3.8 GB)."""
    query_pids, gallery_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    query_camids, gallery_camids = np.asarray(query_camids), np.asarray(gallery_camids)
    max_rank = max(1, min(max_rank, len(gallery_pids)))
    gallery = _unit_rows(np.asarray(gallery_features, dtype=np.float32))
    query = _unit_rows(np.asarray(query_features, dtype=np.float32))
    blocks = (
        _block_metrics(1.0 - query[b] @ gallery.T, query_pids[b], gallery_pids, query_camids[b], gallery_camids,
                       max_rank)
        for b in (slice(start, start + QUERY_BLOCK) for start in range(0, len(query_pids), QUERY_BLOCK))
    )
    return _collect(blocks, max_rank)


def _unit_rows(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def cosine_distances(query_features: np.ndarray, gallery_features: np.ndarray) -> np.ndarray:
    """1 - cosine similarity, after L2-normalising both sides."""
    return 1.0 - _unit_rows(query_features) @ _unit_rows(gallery_features).T
