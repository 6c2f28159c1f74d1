"""A bundle loaded into the interpreter: scores histories and carries its catalog and manifest.

Instances are immutable once built, so swapping the active model is replacing one reference;
requests already holding the old instance finish on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from edge_agent.errors import ModelLoadError, ModelOutputError
from edge_agent.runtime import create_interpreter
from shared import SEQUENCE_CONTRACT_VERSION
from shared.bundle import Manifest
from shared.catalog import Catalog
from shared.events import EventKind
from shared.recommendation import ALLOWED_INPUT, Scores
from shared.sequence import KIND_CODES, SEQUENCE_INPUTS


class LoadedModel:
    def __init__(self, manifest: Manifest, model_bytes: bytes, catalog: Catalog, num_threads: int = 1):
        self.manifest = manifest
        self.catalog = catalog
        self.loaded_at = time.time()
        self.item_index = catalog.index_of()
        contract = manifest.model
        try:
            self.runtime, interpreter = create_interpreter(model_bytes, num_threads)
            self._runner = interpreter.get_signature_runner(contract.signature)
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"model does not load: {e}") from e
        self._interpreter = interpreter  # keeps the runner's interpreter alive
        self.explains = "contributions" in self._runner.get_output_details()
        # models of contract version 1 take no filter mask: their top K is filtered afterwards
        graph_inputs = self._runner.get_input_details()
        self.filters_in_graph = ALLOWED_INPUT in graph_inputs
        # contract version 3: a sequence model takes each position's kind and time gap (shared.sequence)
        self.takes_sequence = contract.contract_version == SEQUENCE_CONTRACT_VERSION
        if self.takes_sequence and not {*SEQUENCE_INPUTS, ALLOWED_INPUT} <= set(graph_inputs):
            raise ModelLoadError(f"a contract version {SEQUENCE_CONTRACT_VERSION} model must take "
                                 f"{', '.join((*SEQUENCE_INPUTS, ALLOWED_INPUT))}; it takes {', '.join(graph_inputs)}")
        self._all_allowed = np.ones((1, contract.num_items), dtype=bool)
        self._lock = threading.Lock()  # a TFLite interpreter is not thread-safe
        self.self_test()

    @property
    def version(self) -> int:
        return self.manifest.version

    def score(self, items: Sequence[int], weights: Sequence[float], allowed: np.ndarray | None = None,
              sequence: tuple[Sequence[int], Sequence[int]] | None = None) -> Scores:
        """Top-K item indices and scores, best first, for one padded history; only ``allowed``
        items (bool [items]) when the model takes a filter mask and enough of them score.
        A sequence model reads ``sequence`` (kinds, gaps) in place of ``weights``."""
        n = self.manifest.model.history_length
        inputs: dict[str, np.ndarray] = {"history_items": np.asarray(items, dtype=np.int32).reshape(1, n)}
        if self.takes_sequence:
            if sequence is None:
                raise ModelOutputError("a sequence model needs each position's kind and time gap")
            inputs["history_kinds"] = np.asarray(sequence[0], dtype=np.int32).reshape(1, n)
            inputs["history_gaps"] = np.asarray(sequence[1], dtype=np.int32).reshape(1, n)
        else:
            inputs["history_weights"] = np.asarray(weights, dtype=np.float32).reshape(1, n)
        if self.filters_in_graph:
            inputs[ALLOWED_INPUT] = self._all_allowed if allowed is None else allowed.reshape(1, -1)
        with self._lock:
            out = self._runner(**inputs)
        contributions = out.get("contributions")  # older models have no explanations
        indices, scores = np.array(out["item_indices"][0]), np.array(out["scores"][0])
        if indices.min() < 0 or indices.max() >= self.manifest.model.num_items or not np.isfinite(scores).all():
            raise ModelOutputError("the model returned item indices out of range or non-finite scores")
        return Scores(indices, scores, None if contributions is None else np.array(contributions[0]))

    def self_test(self) -> None:
        """Canary query: a one-item history must give top_k distinct in-range indices, finite scores."""
        contract = self.manifest.model
        items = [self.catalog.popular[0] if self.catalog.popular else 0] + [0] * (contract.history_length - 1)
        weights = [1.0] + [0.0] * (contract.history_length - 1)
        sequence = ([KIND_CODES[EventKind.PURCHASE]] + [0] * (contract.history_length - 1),
                    [0] * contract.history_length)
        try:
            indices, scores, contributions = self.score(items, weights, sequence=sequence)
        except (ValueError, RuntimeError, KeyError) as e:  # ModelOutputError included
            raise ModelLoadError(f"model failed its self-test query: {e}") from e
        if (
            indices.shape != (contract.top_k,)
            or (contributions is not None and (contributions.ndim != 2 or contributions.shape[1] != contract.top_k
                                               or not 1 <= contributions.shape[0] <= contract.history_length))
            or len(set(indices.tolist())) != contract.top_k
            or indices.min() < 0
            or indices.max() >= contract.num_items
            or not np.all(np.isfinite(scores))
            or (contributions is not None and not np.all(np.isfinite(contributions)))
        ):
            raise ModelLoadError("model failed its self-test: output does not match its contract")

    @property
    def history_length(self) -> int:
        return self.manifest.model.history_length
