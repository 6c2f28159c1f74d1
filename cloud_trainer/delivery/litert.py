"""An exported model in LiteRT, the runtime the agents use (no TensorFlow needed)."""

from __future__ import annotations

import numpy as np

from shared.recommendation import ALLOWED_INPUT


class LiteRTModel:
    """An exported model in LiteRT, the runtime the agents use: ``model(history_items=...,
    history_weights=..., item_allowed=None)`` runs one query (every item allowed by default)."""

    def __init__(self, model_bytes: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=model_bytes, num_threads=1)
        (self.signature,) = self._interpreter.get_signature_list()
        self._runner = self._interpreter.get_signature_runner(self.signature)
        (num_items,) = self._runner.get_input_details()[ALLOWED_INPUT]["shape"][1:]
        self._everything = np.ones((1, num_items), dtype=bool)
        self._inputs = list(self._runner.get_input_details())
        self.takes_sequence = "history_kinds" in self._inputs

    def __call__(self, history_items: np.ndarray, history_weights: np.ndarray | None = None,
                 item_allowed: np.ndarray | None = None, **sequence: np.ndarray) -> dict[str, np.ndarray]:
        """``sequence``: a sequence model's ``history_kinds`` and ``history_gaps`` (shared.sequence).
        Inputs the graph does not take are left out (a sequence model has no weights)."""
        allowed = self._everything if item_allowed is None else item_allowed.reshape(1, -1)
        given = {"history_items": history_items, "history_weights": history_weights, **sequence,
                 ALLOWED_INPUT: allowed}
        out: dict[str, np.ndarray] = self._runner(**{name: given[name] for name in self._inputs})
        return out


def litert_runner(model_bytes: bytes) -> tuple[str, LiteRTModel]:
    """(signature name, the model in LiteRT)."""
    model = LiteRTModel(model_bytes)
    return model.signature, model

