"""The one place that picks a TFLite runtime.

Order: LiteRT (``ai-edge-litert``, the maintained runtime), then ``tflite_runtime`` (older, for
armv7l boxes; needs numpy<2 and cannot run dynamic-range models from recent TensorFlow), then
``tensorflow.lite`` as a development convenience only (never installed by the edge extra).
Set ``EDGE_AGENT_RUNTIME`` to ``litert``, ``tflite_runtime`` or ``tensorflow`` to force one.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from typing import Any

from edge_agent.errors import RuntimeMissing

log = logging.getLogger(__name__)

_CANDIDATES = (
    ("litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite"),
)


def _interpreter_class() -> tuple[str, Any]:
    forced = os.environ.get("EDGE_AGENT_RUNTIME")
    errors = []
    for name, module in _CANDIDATES:
        if forced and name != forced:
            continue
        try:
            cls = importlib.import_module(module).Interpreter
        except ImportError as e:
            errors.append(f"{module}: {e}")
            continue
        if name == "tensorflow":
            log.warning("using tensorflow.lite: fine for development, not for an edge box")
        return name, cls
    raise RuntimeMissing(
        "no TFLite runtime found (" + "; ".join(errors) + "); install one with: pip install ai-edge-litert"
    )


def installed_runtime() -> str:
    """The runtime :func:`create_interpreter` would pick, found without importing it; ``none`` if none is."""
    forced = os.environ.get("EDGE_AGENT_RUNTIME")
    for name, module in _CANDIDATES:
        if (not forced or name == forced) and importlib.util.find_spec(module.partition(".")[0]) is not None:
            return name
    return "none"


def create_interpreter(model_content: bytes, num_threads: int) -> tuple[str, Any]:
    """(runtime name, interpreter with tensors allocated) for a .tflite model in memory."""
    name, cls = _interpreter_class()
    interpreter = cls(model_content=model_content, num_threads=num_threads)
    interpreter.allocate_tensors()
    return name, interpreter
