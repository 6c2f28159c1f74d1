"""EASE's closed form (Steck 2019), shared by the factorized model and the EASE baseline."""

from __future__ import annotations

import numpy as np


def ease(x: np.ndarray, lam: float) -> np.ndarray:
    """EASE's closed form (Steck 2019): B = -P / diag(P) with P = (X'X + lam I)^-1, zero diagonal.

    The factorized model (:mod:`cloud_trainer.models.factorized`) and the EASE baseline
    (:mod:`cloud_trainer.evaluation.baselines`) both use it.
    """
    gram = x.T.astype(np.float64) @ x.astype(np.float64)
    gram[np.diag_indices_from(gram)] += lam
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return weights
