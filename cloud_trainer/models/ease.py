"""EASE's dense closed form (Steck 2019): the EASE baseline of ``cloud-trainer evaluate``, and the
reference the default model (:mod:`cloud_trainer.models.factorized`, EASE in a low-rank eigenspace)
is tested against."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: Columns of the Gram matrix computed at a time from a sparse X (a dense [N, block] slab each).
GRAM_BLOCK = 2048


def gram(x: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray:
    """float64 [N, N] X'X. A sparse X stays sparse: each column block is a sparse x dense product, so
    no dense [users, items] copy is ever made. (X's entries are sums of 1, 0.5 and 0.25: every
    product and sum is exact in float64, so both paths give the same bits.)"""
    if not sp.issparse(x):
        dense = np.asarray(x, dtype=np.float64)
        return dense.T @ dense
    csc = sp.csc_matrix(x, dtype=np.float64)
    transposed = csc.T.tocsr()
    out = np.empty((csc.shape[1], csc.shape[1]), dtype=np.float64)
    for start in range(0, csc.shape[1], GRAM_BLOCK):
        out[:, start : start + GRAM_BLOCK] = transposed @ csc[:, start : start + GRAM_BLOCK].toarray()
    return out


def ease(x: np.ndarray | sp.spmatrix | sp.sparray, lam: float) -> np.ndarray:
    """EASE's closed form (Steck 2019): B = -P / diag(P) with P = (X'X + lam I)^-1, zero diagonal.

    ``x`` is dense or scipy.sparse. Memory: several dense items x items float64 matrices, so the
    baseline (:mod:`cloud_trainer.evaluation.baselines`) is computed only up to 15,000 items.
    """
    g = gram(x)
    g[np.diag_indices_from(g)] += lam
    inverse = np.linalg.inv(g)
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return weights
