"""The two-tower model under tf.distribute: MirroredStrategy over two logical CPUs, and
MultiWorkerMirroredStrategy with two worker processes on localhost, each against one worker.

Every run trains on the same global batches from the same initial weights, so a distributed run is
the same optimisation as one worker's up to the order float32 sums are taken in: each step's
gradient is summed per replica, then across replicas. The tolerance, elementwise on every weight:
``|a - b| <= WEIGHTS_ATOL + WEIGHTS_RTOL * |b|``. Adam moves a weight by about the learning rate
(2e-3) a step, whatever its gradient, so rounding shows as a fraction of a step (WEIGHTS_ATOL is 1%
of one step) on small weights and as a few units in the last place, growing with the steps, on
large ones (the item biases start at log Q, down to -9.4). Measured on the ``prepared`` slice
(12,501 examples, 48 steps an epoch, 2 epochs, dim 8), both distributed runs against one device:
at most 1.3e-6 on small weights (the projection bias, |b| <= 0.02) and 2.9e-5 (3e-6 relative) on
the item biases; losses within 2e-8 of their value. The tolerances leave a margin of 15 to 30 on
the weights and 50 on the losses. Workers that do not split the global batch between them
(auto-sharding off: each trains on whole batches, so the global batch doubles) miss them by far:
weights differ by up to 0.01 to 0.17 (20 to 130% of the RMS), losses by 3e-4 and 7e-4.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import pytest

from harness import ROOT
from shared.bundle import MODEL_FILE

TRAIN = ("--model", "two-tower", "--dim", "8", "--epochs", "2", "--batch-size", "256")
WEIGHTS_ATOL = 2e-5  # 1% of one Adam step at the default learning rate
WEIGHTS_RTOL = 1e-4
LOSS_TOLERANCE = 1e-6  # relative
WORKERS_TIMEOUT_S = 240


def _train(prepared: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud_trainer.cli", "train", "--events", str(prepared / "events.csv.gz"),
         "--out", str(out), *TRAIN, *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def one_worker(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("one-worker") / "run"
    result = _train(prepared, run)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def _weights(run: Path) -> dict[str, list[np.ndarray]]:
    import keras

    model = keras.models.load_model(run / "model.keras")
    return {name: model.get_layer(name).get_weights()
            for name in ("history_embedding", "user_projection", "item_vectors")}


def _assert_same_training(run: Path, reference: Path) -> None:
    """The losses per epoch and every weight of ``run`` equal ``reference``'s within the tolerances."""
    loss = json.loads((run / "metrics.json").read_text())["loss"]
    expected = json.loads((reference / "metrics.json").read_text())["loss"]
    assert len(loss) == len(expected) == 2 and loss[1] < loss[0], (loss, expected)  # it learns
    for a, b in zip(loss, expected, strict=True):
        assert abs(a - b) <= LOSS_TOLERANCE * b, (loss, expected)
    got, want = _weights(run), _weights(reference)
    for layer, arrays in want.items():
        for a, b in zip(got[layer], arrays, strict=True):
            np.testing.assert_allclose(a, b, rtol=WEIGHTS_RTOL, atol=WEIGHTS_ATOL, err_msg=f"{layer} {b.shape}")


def test_two_tower_trains_under_mirrored_strategy_on_two_logical_cpus(
    prepared: Path, one_worker: Path, tmp_path: Path
) -> None:
    mirrored = _train(prepared, tmp_path / "mirrored", "--distribute", "mirrored", "--cpu-devices", "2")
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    on_two = json.loads((tmp_path / "mirrored" / "metrics.json").read_text())
    assert on_two["replicas"] == 2 and json.loads((one_worker / "metrics.json").read_text())["replicas"] == 1
    assert all(math.isfinite(v) for v in on_two["loss"])
    _assert_same_training(tmp_path / "mirrored", one_worker)


def test_transformer_trains_under_mirrored_strategy_on_two_logical_cpus(prepared: Path, tmp_path: Path) -> None:
    """The transformer uses the same strategy plumbing (models.transformer_training). Not compared
    weight by weight with one device: its dropout draws differ per replica."""
    run = tmp_path / "transformer"
    mirrored = _train(prepared, run, "--model", "transformer", "--distribute", "mirrored", "--cpu-devices", "2")
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "transformer" and metrics["replicas"] == 2
    assert len(metrics["loss"]) == 2 and all(math.isfinite(v) for v in metrics["loss"])
    assert metrics["loss"][1] < metrics["loss"][0]  # it learns


def _free_ports(count: int) -> list[int]:
    """Ports nothing listens on at 127.0.0.1 (all held open until all are chosen, so they differ)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Workers:
    run: Path  # the --out both workers were given
    returncodes: list[int | None]
    output: list[str]  # each worker's stdout and stderr
    seconds: float


@pytest.fixture(scope="module")
def two_workers(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Workers:
    """Two worker processes on localhost, each with its TF_CONFIG, killed (by pid) if still running
    at the deadline or when anything fails."""
    folder = tmp_path_factory.mktemp("two-workers")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    started = time.monotonic()
    try:
        for index in range(2):
            tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
            logs.append((folder / f"worker{index}.log").open("wb"))
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "cloud_trainer.cli", "train", "--events", str(prepared / "events.csv.gz"),
                 "--out", str(folder / "run"), *TRAIN, "--distribute", "multi-worker"],
                stdout=logs[-1], stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "TF_CONFIG": json.dumps(tf_config)}))
        for worker in workers:  # one deadline for both: a worker waiting for a dead peer must not hang the suite
            worker.wait(timeout=max(1.0, started + WORKERS_TIMEOUT_S - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass  # the returncodes say so
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()
    output = [(folder / f"worker{index}.log").read_text(errors="replace") for index in range(len(workers))]
    return Workers(folder / "run", [w.returncode for w in workers], output,
                   time.monotonic() - started)


def _assert_finished(workers: Workers) -> None:
    assert workers.returncodes == [0, 0], (workers.returncodes, f"after {workers.seconds:.0f} s",
                                           "\n\n".join(text[-3000:] for text in workers.output))


def test_two_workers_on_localhost_train_what_one_worker_trains(two_workers: Workers, one_worker: Path) -> None:
    _assert_finished(two_workers)
    assert f"run directory: {two_workers.run}" in two_workers.output[0]
    assert "the chief writes the run directory" in two_workers.output[1]
    metrics = json.loads((two_workers.run / "metrics.json").read_text())
    assert metrics["workers"] == 2 and metrics["replicas"] == 2 and metrics["chief"] is True
    _assert_same_training(two_workers.run, one_worker)


def test_the_chief_of_two_workers_writes_a_run_that_exports(two_workers: Workers, keys: Path,
                                                            tmp_path: Path) -> None:
    """The export path on a two-tower run: the served graph and weights are the served model's."""
    _assert_finished(two_workers)
    result = subprocess.run(
        [sys.executable, "-m", "cloud_trainer.cli", "export", "--run", str(two_workers.run), "--key",
         str(keys / "signing.key"), "--out", str(tmp_path / "bundle"), "--version", "7"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parity vs Keras" in result.stderr and (tmp_path / "bundle" / MODEL_FILE).stat().st_size > 0


def test_distribute_is_refused_for_the_closed_form_model(prepared: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloud_trainer.cli", "train", "--events", str(prepared / "events.csv.gz"),
         "--out", str(tmp_path / "run"), "--distribute", "mirrored"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 2 and "--model two-tower" in result.stderr and "Traceback" not in result.stderr


def test_multi_worker_without_tf_config_is_refused_with_the_fix(prepared: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "cloud_trainer.cli", "train", "--events", str(prepared / "events.csv.gz"),
         "--out", str(tmp_path / "run"), *TRAIN, "--distribute", "multi-worker"],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert result.returncode == 2 and "TF_CONFIG" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def _tf_config(cluster: dict[str, list[str]], task_type: str, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def test_the_chief_is_worker_0_unless_the_cluster_names_one() -> None:
    from cloud_trainer.distribute import placement_from_tf_config

    workers = {"worker": ["a:1", "b:1", "c:1"]}
    assert [placement_from_tf_config(_tf_config(workers, "worker", i)).chief for i in range(3)] == [True, False, False]
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert placement_from_tf_config(_tf_config(with_chief, "chief", 0)).chief
    assert not placement_from_tf_config(_tf_config(with_chief, "worker", 0)).chief
    assert placement_from_tf_config(_tf_config(with_chief, "worker", 1)).workers == 3


@pytest.mark.parametrize("text, message", [
    ("", "needs the TF_CONFIG"),
    ("{not json", "not usable"),
    ('{"cluster": {"worker": ["a:1"]}}', "not usable"),
    (_tf_config({"worker": ["a:1", "b:1"]}, "worker", 2), "not in the cluster"),
    (_tf_config({"worker": ["a:1"], "ps": ["p:1"]}, "worker", 0), "not ps"),
])
def test_a_wrong_tf_config_is_an_error_that_names_the_fix(text: str, message: str) -> None:
    from cloud_trainer.distribute import placement_from_tf_config

    with pytest.raises(ValueError, match=message):
        placement_from_tf_config(text)
