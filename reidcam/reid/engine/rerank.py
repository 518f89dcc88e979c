"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), with the usual k1=20, k2=6, lambda=0.3.

Query and gallery features are pooled (N = Q + G). Distances are squared Euclidean, each row
divided by its maximum. For each image i:

1. R(i, k1): the k1-reciprocal neighbours of i (j is in i's top k1+1 and i is in j's top k1+1);
2. expanded with R(j, k1/2) of each j in R(i, k1) that shares more than 2/3 of its members with R(i, k1);
3. encoded as a sparse vector V_i with weights exp(-d(i, j)) over that set, normalised to sum 1;
4. query expansion: V_i replaced by the mean of V over i's top-k2 neighbours.

The Jaccard distance 1 - sum(min(V_q, V_g)) / sum(max(V_q, V_g)) is blended with the original
distance: d* = (1 - lambda) d_J + lambda d. Only the top k1+1 neighbours of each row and the
sparse V are kept, so memory is O(N k1) plus the (Q, G) result, never a dense (N, N) matrix.
"""

from __future__ import annotations

import numpy as np
import torch

ROW_BLOCK = 2048


def _row_normalised_distances(features: torch.Tensor, rows: slice) -> torch.Tensor:
    """Squared Euclidean distances of ``features[rows]`` to all features, each row / its max."""
    block = features[rows]
    squared = (block.pow(2).sum(1, keepdim=True) + features.pow(2).sum(1)[None, :] - 2.0 * block @ features.T)
    squared = squared.clamp(min=0.0)
    return squared / squared.amax(dim=1, keepdim=True).clamp(min=1e-12)


def _nearest_neighbours(features: torch.Tensor, count: int) -> np.ndarray:
    """(N, count) indices of each row's nearest images, nearest first (the row itself included)."""
    ranks = []
    for start in range(0, len(features), ROW_BLOCK):
        distances = _row_normalised_distances(features, slice(start, start + ROW_BLOCK))
        ranks.append(torch.topk(distances, count, dim=1, largest=False, sorted=True).indices)
    return torch.cat(ranks).cpu().numpy()


def _reciprocal_neighbours(index: int, neighbours: np.ndarray, k: int) -> np.ndarray:
    forward = neighbours[index, :k + 1]
    backward = neighbours[forward, :k + 1]
    return forward[(backward == index).any(axis=1)]


def _expanded_reciprocal_set(index: int, neighbours: np.ndarray, k1: int) -> np.ndarray:
    reciprocal = _reciprocal_neighbours(index, neighbours, k1)
    half_k = int(np.around(k1 / 2.0))
    expansion = [reciprocal]
    for candidate in reciprocal:
        candidate_set = _reciprocal_neighbours(int(candidate), neighbours, half_k)
        if len(np.intersect1d(candidate_set, reciprocal)) > 2.0 / 3.0 * len(candidate_set):
            expansion.append(candidate_set)
    return np.unique(np.concatenate(expansion))


def _encode(features: torch.Tensor, neighbours: np.ndarray, k1: int):
    """Sparse (N, N) CSR matrix of the k-reciprocal weight vectors V."""
    from scipy import sparse

    rows, cols, values = [], [], []
    for start in range(0, len(features), ROW_BLOCK):
        distances = _row_normalised_distances(features, slice(start, start + ROW_BLOCK)).cpu().numpy()
        for offset, row_distances in enumerate(distances):
            index = start + offset
            members = _expanded_reciprocal_set(index, neighbours, k1)
            weights = np.exp(-row_distances[members].astype(np.float64))
            rows.append(np.full(len(members), index))
            cols.append(members)
            values.append(weights / weights.sum())
    size = len(features)
    return sparse.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(size, size)
    )


def _query_expansion(encoding, neighbours: np.ndarray, k2: int):
    from scipy import sparse

    if k2 <= 1:
        return encoding
    size = encoding.shape[0]
    rows = np.repeat(np.arange(size), k2)
    weights = np.full(size * k2, 1.0 / k2)
    averaging = sparse.csr_matrix((weights, (rows, neighbours[:, :k2].ravel())), shape=(size, size))
    return (averaging @ encoding).tocsr()


def _jaccard_distances(encoding, num_query: int) -> np.ndarray:
    """1 - sum(min) / sum(max) of each query's V against each gallery image's V (rows sum to 1)."""
    by_column = encoding.tocsc()
    size = encoding.shape[0]
    result = np.empty((num_query, size - num_query))
    for query in range(num_query):
        start, end = encoding.indptr[query], encoding.indptr[query + 1]
        overlap = np.zeros(size)
        for column, value in zip(encoding.indices[start:end], encoding.data[start:end]):
            c_start, c_end = by_column.indptr[column], by_column.indptr[column + 1]
            others = by_column.indices[c_start:c_end]
            overlap[others] += np.minimum(value, by_column.data[c_start:c_end])
        result[query] = (1.0 - overlap / (2.0 - overlap))[num_query:]
    return result


def k_reciprocal_rerank(
    query_features: np.ndarray | torch.Tensor,
    gallery_features: np.ndarray | torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked (Q, G) distance matrix; distances are computed on the features' device in float32."""
    features = torch.cat([torch.as_tensor(query_features), torch.as_tensor(gallery_features)]).float()
    num_query = len(query_features)
    count = min(k1 + 1, len(features))
    neighbours = _nearest_neighbours(features, count)
    k2 = min(k2, count)
    encoding = _query_expansion(_encode(features, neighbours, k1), neighbours, k2)
    jaccard = _jaccard_distances(encoding, num_query)
    original = torch.cat([
        _row_normalised_distances(features, slice(start, min(start + ROW_BLOCK, num_query)))[:, num_query:]
        for start in range(0, num_query, ROW_BLOCK)
    ]).cpu().double().numpy()
    return (1.0 - lambda_value) * jaccard + lambda_value * original
