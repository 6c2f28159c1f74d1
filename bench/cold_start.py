"""Cold-start side features at catalogue scale: time and peak memory of ``extend_with_cold_items``.

Synthetic catalogues: titles of 5 words drawn from a Zipf-like vocabulary of 30,000 words, 2,000
categories, prices from 0.5 to 50; random model weights (the cost does not depend on the values).
Baseline, side by side in the same process: the same ridge with dense feature matrices (the
first implementation), on a catalogue small enough for it. Peak memory is traced by tracemalloc
(numpy reports its buffers to it), per call. Writes bench/results/cold_start.json. Not a test:
nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cloud_trainer.models.dot_product import ModelWeights  # noqa: E402
from cloud_trainer.models.side_features import FeatureSpace, SideFeatureSettings, extend_with_cold_items  # noqa: E402
from shared.catalog import CatalogItem  # noqa: E402

VOCABULARY, CATEGORIES = 30_000, 2_000
T = TypeVar("T")


def catalogue(rng: np.random.Generator, count: int, tag: str) -> list[CatalogItem]:
    zipf = 1 / np.arange(1, VOCABULARY + 1)
    words = rng.choice(VOCABULARY, size=(count, 5), p=zipf / zipf.sum())
    categories = rng.integers(CATEGORIES, size=count)
    prices = rng.uniform(0.5, 50, size=count)
    return [CatalogItem(f"{tag}{n}", " ".join(f"w{w}" for w in row), f"c{c}", float(p))
            for n, (row, c, p) in enumerate(zip(words, categories, prices, strict=True))]


def model(rng: np.random.Generator, items: int, dim: int) -> ModelWeights:
    return ModelWeights(
        history_embedding=rng.standard_normal((items, dim)).astype(np.float32),
        projection=np.eye(dim, dtype=np.float32), projection_bias=np.zeros(dim, dtype=np.float32),
        item_vectors=rng.standard_normal((dim, items)).astype(np.float32),
        item_bias=rng.standard_normal(items).astype(np.float32),
    )


def dense_baseline(weights: ModelWeights, known: list[CatalogItem], new: list[CatalogItem],
                   settings: SideFeatureSettings) -> np.ndarray:
    """The same prediction with dense feature matrices and dense products."""
    space = FeatureSpace.fit(known, settings)
    x_known, x_new = space.matrix(known).dense(), space.matrix(new).dense()
    targets = np.hstack([weights.history_embedding, weights.item_vectors.T, weights.item_bias[:, None]])
    gram = x_known.T @ x_known
    gram[np.diag_indices_from(gram)] += settings.l2
    return x_new @ np.linalg.solve(gram, x_known.T @ targets.astype(np.float64))


def measure(call: Callable[[], T]) -> tuple[float, float, T]:
    """Seconds, peak MB traced, and the result of ``call()``."""
    tracemalloc.start()
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return round(seconds, 2), round(peak / 2**20, 1), result


def main() -> None:
    rng = np.random.default_rng(0)
    settings = SideFeatureSettings()
    results: dict[str, object] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    known, new, dim = 10_000, 2_000, 64
    known_items, new_items, weights = catalogue(rng, known, "k"), catalogue(rng, new, "n"), model(rng, known, dim)
    sparse_s, sparse_mb, extended = measure(lambda: extend_with_cold_items(weights, known_items, new_items, settings))
    dense_s, dense_mb, predicted = measure(lambda: dense_baseline(weights, known_items, new_items, settings))
    same = bool(np.allclose(extended.item_vectors[:, known:], settings.vector_scale * predicted[:, dim:-1].T,
                            atol=1e-4))
    results["side_by_side"] = {"known_items": known, "new_items": new, "dim": dim,
                               "sparse": {"seconds": sparse_s, "peak_mb": sparse_mb},
                               "dense_baseline": {"seconds": dense_s, "peak_mb": dense_mb}, "same_vectors": same}
    print(f"{known} + {new} items, dim {dim}: sparse {sparse_s} s, {sparse_mb} MB; "
          f"dense {dense_s} s, {dense_mb} MB; same vectors: {same}", flush=True)
    known, new = 100_000, 20_000
    known_items, new_items, weights = catalogue(rng, known, "k"), catalogue(rng, new, "n"), model(rng, known, dim)
    seconds, peak_mb, _ = measure(lambda: extend_with_cold_items(weights, known_items, new_items, settings))
    features = FeatureSpace.fit(known_items, settings).size
    dense_mb = round(known * features * 8 / 2**20)
    results["large"] = {"known_items": known, "new_items": new, "dim": dim, "seconds": seconds, "peak_mb": peak_mb,
                        "features": features, "dense_known_matrix_mb": dense_mb}
    print(f"{known} + {new} items, dim {dim}: {seconds} s, peak {peak_mb} MB ({features} features; a dense "
          f"matrix of the trained items alone: {dense_mb} MB)")
    out = ROOT / "bench" / "results" / "cold_start.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
