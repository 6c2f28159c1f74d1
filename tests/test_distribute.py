"""The Keras training code under tf.distribute: MirroredStrategy over two logical CPU devices."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from harness import ROOT


def _train(prepared: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud_trainer.cli", "train", "--events", str(prepared / "events.csv.gz"),
         "--out", str(out), "--model", "two-tower", "--dim", "8", "--epochs", "2", "--batch-size", "256", *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_two_tower_trains_under_mirrored_strategy_on_two_logical_cpus(prepared: Path, tmp_path: Path) -> None:
    mirrored = _train(prepared, tmp_path / "mirrored", "--distribute", "mirrored", "--cpu-devices", "2")
    assert mirrored.returncode == 0, mirrored.stderr[-3000:]
    plain = _train(prepared, tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr[-3000:]
    on_two = json.loads((tmp_path / "mirrored" / "metrics.json").read_text())
    on_one = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert on_two["replicas"] == 2 and on_one["replicas"] == 1
    assert all(math.isfinite(v) for v in on_two["loss"]) and on_two["loss"][1] < on_two["loss"][0]  # it learns
    # the same global batches, split over two replicas: the same optimisation up to summation order
    for a, b in zip(on_two["loss"], on_one["loss"], strict=True):
        assert abs(a - b) <= 0.02 * b, (on_two["loss"], on_one["loss"])
    assert (tmp_path / "mirrored" / "model.keras").stat().st_size > 0


def test_distribute_is_refused_for_the_closed_form_model(prepared: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cloud_trainer.cli", "train", "--events", str(prepared / "events.csv.gz"),
         "--out", str(tmp_path / "run"), "--distribute", "mirrored"],
        capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 2 and "--model two-tower" in result.stderr and "Traceback" not in result.stderr
