"""Prompts for cold-start users (issue 18, item 3): users with interactions on the target side but no prompt.

A cold user's prompt is the similarity-weighted mean of the prompts of their `k` nearest users that have one
("warm" users), where similarity is the cosine between the two users' sets of train items (binary
interaction vectors). Ties are broken by the warm user's position, so the result is deterministic.
A cold user who shares no train item with any warm user (or has no train rows) gets the mean prompt
of the warm users instead. No Ray, no torch: sparse matrices (scipy) and numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def interaction_matrix(user_rows: np.ndarray, item_cols: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary [n_users, n_items] CSR matrix, rows L2-normalised (a row with no item stays zero): the dot
    product of two rows is the cosine of the two users' item sets. Repeated (user, item) pairs count once."""
    x = sp.csr_matrix((np.ones(len(user_rows), dtype=np.float32), (user_rows, item_cols)), shape=(n_users, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    norms = np.sqrt(np.asarray(x.sum(axis=1)).ravel())
    return sp.diags(np.where(norms > 0, 1.0 / np.maximum(norms, 1e-12), 0.0).astype(np.float32)) @ x


@dataclass
class Neighbours:
    """Each cold user's nearest warm users: index [n, k] into the warm users (-1 = none) and cosine [n, k]."""

    index: np.ndarray
    weight: np.ndarray

    @property
    def found(self) -> np.ndarray:
        """[n] bool: the user has at least one neighbour with a positive similarity."""
        return (self.index >= 0).any(axis=1)


def nearest(cold: sp.csr_matrix, warm: sp.csr_matrix, k: int, chunk: int = 1024) -> Neighbours:
    """The `k` warm rows most similar to each cold row (cosine > 0 only), `chunk` cold rows at a time
    (the similarity block is sparse: only users sharing an item with the chunk appear)."""
    index = np.full((cold.shape[0], k), -1, dtype=np.int64)
    weight = np.zeros((cold.shape[0], k), dtype=np.float32)
    warm_t = warm.T.tocsc()
    for lo in range(0, cold.shape[0], chunk):
        sims = (cold[lo:lo + chunk] @ warm_t).tocsr()
        for r in range(sims.shape[0]):
            a, b = sims.indptr[r], sims.indptr[r + 1]
            cols, vals = sims.indices[a:b], sims.data[a:b]
            keep = vals > 0
            cols, vals = cols[keep], vals[keep]
            order = np.lexsort((cols, -vals))[:k]  # highest similarity first; ties: lower warm index first
            index[lo + r, :len(order)], weight[lo + r, :len(order)] = cols[order], vals[order]
    return Neighbours(index, weight)


def blend(neighbours: Neighbours, prompts: np.ndarray, positions: np.ndarray, mean_prompt: np.ndarray) -> np.ndarray:
    """Cold users' prompts [n, ...]: the weight-normalised sum of their neighbours' prompts, the mean prompt
    where they have none. prompts: the needed warm users' prompts [m, ...]; positions: each warm index's
    row in `prompts` (an array indexed by warm index, -1 where not loaded)."""
    n = len(neighbours.index)
    flat = prompts.reshape(len(prompts), -1).astype(np.float64)
    out = np.tile(mean_prompt.reshape(1, -1).astype(np.float64), (n, 1))
    for i in np.flatnonzero(neighbours.found):
        have = neighbours.index[i] >= 0
        rows = positions[neighbours.index[i][have]]
        w = neighbours.weight[i][have].astype(np.float64)
        out[i] = (w[:, None] * flat[rows]).sum(axis=0) / w.sum()
    return out.astype(np.float32).reshape((n, *prompts.shape[1:]))
