"""Work and memory traffic of one request through a .tflite model, counted from its graph.

Emulated arm64 timings say nothing about a Raspberry Pi, so the Pi figures are estimated from what
a query must move through memory: a scoring model of this kind streams its item matrix once per
query and does little arithmetic per byte, so memory bandwidth bounds it. Counted per operator:

- multiply-accumulates of FULLY_CONNECTED and BATCH_MATMUL (output elements x inner dimension);
- other element operations (one per output element; TOPK_V2 one per input element);
- bytes read (every input tensor in full, except GATHER, which reads only the rows it returns)
  and bytes written (every output tensor).

The latency estimate is traffic / bandwidth at the single-threaded figures the issue gives
(Raspberry Pi 4 about 5.5 GB/s, Pi 5 about 9 GB/s): a lower bound that ignores caches (which
help: small tensors stay in L2) and compute (which hurts on the Pi 4's Cortex-A72 without int8
dot-product instructions). It is an estimate, not a measurement.

    python devtools/model_cost.py MODEL.tflite
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

PI_BANDWIDTH_GB_S = {"raspberry_pi_4": 5.5, "raspberry_pi_5": 9.0}
MATMULS = {"FULLY_CONNECTED", "BATCH_MATMUL"}


def _bytes(tensor: dict[str, Any]) -> int:
    return int(np.prod(tensor["shape"], dtype=np.int64)) * np.dtype(tensor["dtype"]).itemsize


def _elements(tensor: dict[str, Any]) -> int:
    return int(np.prod(tensor["shape"], dtype=np.int64))


def model_cost(model_bytes: bytes) -> dict[str, object]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # without the XNNPACK delegate, so the graph's own operators are listed, not delegate nodes
    interpreter = Interpreter(model_content=model_bytes, num_threads=1,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # noqa: SLF001 - the only way to list operators and their tensors
    produced = {i for op in ops for i in op["outputs"]}
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}
    macs = element_ops = read = written = weights_read = 0
    kinds: Counter[str] = Counter()
    for op in ops:
        name = op["op_name"]
        kinds[name] += 1
        inputs = [tensors[i] for i in op["inputs"] if i >= 0]
        outputs = [tensors[i] for i in op["outputs"]]
        if name == "GATHER":
            params_read = _bytes(outputs[0])
            op_read = params_read + sum(_bytes(t) for t in inputs[1:])
            if inputs[0]["index"] not in produced and inputs[0]["index"] not in graph_inputs:
                weights_read += params_read
        else:
            op_read = sum(_bytes(t) for t in inputs)
            weights_read += sum(_bytes(t) for t in inputs if t["index"] not in produced
                                and t["index"] not in graph_inputs and _elements(t) > 1)
        read += op_read
        written += sum(_bytes(t) for t in outputs)
        if name in MATMULS:
            macs += _elements(outputs[0]) * int(inputs[0]["shape"][-1])
        elif name == "TOPK_V2":
            element_ops += _elements(inputs[0])
        else:
            element_ops += sum(_elements(t) for t in outputs)
    traffic = read + written
    return {
        "operators": len(ops),
        "operator_kinds": dict(kinds.most_common()),
        "multiply_accumulates": macs,
        "other_element_operations": element_ops,
        "bytes_read": read,
        "bytes_read_of_weights": weights_read,
        "bytes_written": written,
        "memory_traffic_bytes": traffic,
        "estimated_ms_if_memory_bound": {
            pi: round(traffic / (gb_s * 1e9) * 1000, 3) for pi, gb_s in PI_BANDWIDTH_GB_S.items()
        },
        "estimate_basis": "memory traffic / single-threaded bandwidth (Pi 4 ~5.5 GB/s, Pi 5 ~9 GB/s); "
                          "an estimate, not a measurement: caches help, compute on the Pi can dominate",
    }


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python devtools/model_cost.py MODEL.tflite")
    print(json.dumps(model_cost(Path(sys.argv[1]).read_bytes()), indent=1))


if __name__ == "__main__":
    main()
