"""In-process serving cost of ``--model transformer`` at 100k items and L = 50.

A transformer (2 blocks, 2 heads) with random weights over 100,000 items is exported int8 as
``export`` builds it (:mod:`cloud_trainer.delivery.export_sequence`: the encoder's arithmetic in
float, matmuls, gathers and top-K int8; explanations in the graph), bundled with contract version
3, and loaded by the agent's own :class:`edge_agent.loaded_model.LoadedModel` on one interpreter
thread. Timed: ``recommend()`` (the REST route's function) for random 50-event histories with
timestamps, and the interpreter call alone; plus the file size and the Pi estimate of
``devtools/model_cost.py``. The cost of scoring does not depend on what the weights hold.
``--blend-rank R`` adds rows for ``--model blend`` (:mod:`cloud_trainer.delivery.export_blend`):
each transformer with a random factorized model of rank R over the same items (200 events,
distinct pooling, repeat term), weight 0.5, histories of 200 events; and, side by side, that
factorized model alone (model contract 2), the blend's baseline.

    nice python bench/transformer_serving.py [--dims 32,64] [--queries 2000] [--blend-rank 256]

Writes ``bench/results/transformer_serving.json``. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import percentiles  # noqa: E402
from devtools.model_cost import model_cost  # noqa: E402
from shared.events import EventKind, history_inputs  # noqa: E402

if TYPE_CHECKING:
    from cloud_trainer.models.dot_product import ModelWeights

N_ITEMS, HISTORY, TOP_K = 100_000, 50, 100
BLEND_HISTORY = 200  # the factorized model's default


class _Event:
    __slots__ = ("item_id", "kind", "timestamp")

    def __init__(self, item_id: str, kind: EventKind, timestamp: float) -> None:
        self.item_id, self.kind, self.timestamp = item_id, kind, timestamp


def _histories(rng: np.random.Generator, count: int, length: int = HISTORY) -> list[list[_Event]]:
    kinds = list(EventKind)
    out = []
    for _ in range(count):
        times = 1.7e9 + np.cumsum(rng.exponential(3600.0, length))
        out.append([_Event(f"SKU-{int(rng.integers(N_ITEMS)):06d}", kinds[int(rng.integers(3))], float(t))
                    for t in times])
    return out


def _factorized(rank: int) -> ModelWeights:
    """A random factorized model of ``rank`` over the items (distinct pooling, repeat term)."""
    from cloud_trainer.models.dot_product import ModelWeights  # noqa: F811

    rng = np.random.default_rng(11)
    table = (rng.standard_normal((N_ITEMS, rank)) / np.sqrt(rank)).astype(np.float32)
    return ModelWeights(table, np.eye(rank, dtype=np.float32), np.zeros(rank, np.float32),
                        np.ascontiguousarray(table.T), rng.standard_normal(N_ITEMS).astype(np.float32),
                        pooling="distinct", repeat_weight=0.5, recency=0.99)


def _model_bytes(kind: str, model: object, rank: int, columns: dict[str, np.ndarray]) -> bytes:
    """The int8 export of ``kind``: the transformer ``model``, a blend of it and a factorized model
    of ``rank``, or that factorized model alone (the blend's baseline, side by side)."""
    from cloud_trainer.delivery.export import to_tflite
    from cloud_trainer.delivery.export_blend import blend_to_tflite
    from cloud_trainer.delivery.export_sequence import sequence_to_tflite
    from cloud_trainer.models.blend import BlendWeights, TransformerWeights

    if kind == "transformer":
        return sequence_to_tflite(model, HISTORY, TOP_K, "int8", columns)  # type: ignore[arg-type]
    if kind == "factorized":
        present = (columns["history_kinds"] > 0).astype(np.float32)
        weights = present / np.maximum(present.sum(axis=1, keepdims=True), 1.0)
        return to_tflite(_factorized(rank), BLEND_HISTORY, TOP_K, "int8", (columns["history_items"], weights))
    blend = BlendWeights(_factorized(rank), TransformerWeights.of(model, np.arange(N_ITEMS)),  # type: ignore[arg-type]
                         0.5, BLEND_HISTORY)
    return blend_to_tflite(blend, TOP_K, "int8", columns)


def bench(kind: str, dim: int, queries: int, work: Path, rank: int = 0) -> dict[str, object]:
    import keras

    from cloud_trainer.delivery.bundler import BundleOptions, write_bundle
    from cloud_trainer.delivery.litert import litert_runner
    from cloud_trainer.models.transformer import build_model
    from edge_agent.loaded_model import LoadedModel
    from shared import CONTRACT_VERSION, SEQUENCE_CONTRACT_VERSION
    from shared.bundle import ModelContract, parse_manifest
    from shared.catalog import Catalog, CatalogItem
    from shared.recommendation import recommend
    from shared.sequence import sequence_inputs
    from shared.signing import generate_private_key, private_key_pem

    rng = np.random.default_rng(7)
    keras.utils.set_random_seed(7)
    model = build_model(N_ITEMS, dim, HISTORY)
    catalog = Catalog(items=tuple(CatalogItem(id=f"SKU-{i:06d}", title=f"Item {i}") for i in range(N_ITEMS)),
                      popular=tuple(range(200)))
    index = catalog.index_of()
    length = HISTORY if kind == "transformer" else BLEND_HISTORY
    calibration = [sequence_inputs([(index[e.item_id], e.kind, e.timestamp) for e in h], length)
                   for h in _histories(rng, 256, length)]
    columns = {name: np.array([c[n] for c in calibration], dtype=np.int32)
               for n, name in enumerate(("history_items", "history_kinds", "history_gaps"))}
    started = time.monotonic()
    model_bytes = _model_bytes(kind, model, rank, columns)
    export_s = time.monotonic() - started
    key = work / f"signing-{dim}.key"
    key.write_bytes(private_key_pem(generate_private_key()))
    contract = ModelContract(variant="int8", signature=litert_runner(model_bytes)[0], history_length=length,
                             top_k=TOP_K, num_items=N_ITEMS,
                             contract_version=CONTRACT_VERSION if kind == "factorized" else SEQUENCE_CONTRACT_VERSION)
    manifest = write_bundle(work / f"bundle-{kind}-{dim}-{rank}", model_bytes, catalog.to_bytes(), contract, key,
                            BundleOptions(version=1), {"synthetic": True})
    loaded = LoadedModel(parse_manifest(manifest.to_json()), model_bytes, catalog, num_threads=1)
    histories = _histories(rng, queries, length)
    for h in histories[:50]:  # warm-up
        recommend(loaded, h, 10)
    served, graph = [], []
    for h in histories:
        t0 = time.perf_counter()
        recommend(loaded, h, 10)
        served.append((time.perf_counter() - t0) * 1000)
        items, kinds, gaps = sequence_inputs([(index[e.item_id], e.kind, e.timestamp) for e in h], length)
        weights = history_inputs([(index[e.item_id], e.kind) for e in h], length)[1]
        t0 = time.perf_counter()
        loaded.score(items, weights, None, sequence=(kinds, gaps) if loaded.takes_sequence else None)
        graph.append((time.perf_counter() - t0) * 1000)
    cost = model_cost(model_bytes)
    return {"model": kind if kind == "transformer" else f"{kind} (factorized rank {rank})",
            "items": N_ITEMS, "dim": dim if kind != "factorized" else rank, "history_length": length,
            "top_k": TOP_K, "variant": "int8",
            "model_bytes": len(model_bytes), "export_seconds": round(export_s, 1),
            "recommend_ms": percentiles(served), "interpreter_ms": percentiles(graph),
            "pi_estimate_ms": cost["estimated_ms_if_memory_bound"],
            "memory_traffic_bytes": cost["memory_traffic_bytes"],
            "multiply_accumulates": cost["multiply_accumulates"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="32,64")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--blend-rank", type=int, default=0,
                        help="also time a blend with a factorized model of this rank")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "transformer_serving.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dim in (int(d) for d in args.dims.split(",")):
            kinds = ("transformer", "blend") if args.blend_rank else ("transformer",)
            for kind in kinds:
                rows.append(bench(kind, dim, args.queries, Path(tmp), args.blend_rank))
                print(json.dumps(rows[-1]), flush=True)
        if args.blend_rank:  # the blend's baseline: its factorized part alone
            rows.append(bench("factorized", 32, args.queries, Path(tmp), args.blend_rank))  # (no transformer in it)
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
