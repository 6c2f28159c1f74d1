"""A realistic fleet for the console tests: retained statuses as agents publish them (valid against
the AgentStatus contract), a runs folder with an evaluation and a real bundle, and the console
started as ``cloud-trainer console`` (a process of ours, stopped by PID)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from devtools.processes import free_port, stop, wait_for_port
from harness import ROOT
from shared.openapi import document
from shared.outcomes import Arm, OutcomeCell, outcomes_status

#: A device id no browser must run: it comes from a device (the topic), like everything in a status.
HOSTILE_DEVICE = "x<img src=x onerror=alert(1)><b>bold"  # (no "/": a topic level)


def cell(version: int, arm: Arm, requests: int, converted: int) -> OutcomeCell:
    return OutcomeCell(version, arm, requests=requests, impressions=5 * requests, clicks=requests // 4,
                       conversions=converted + 3, converted_requests=converted, revenue=9.5 * converted)


def online(device: str, channel: str, version: int, *cells: OutcomeCell, at: float, requests: int = 1200,
           stale: bool = False, last: tuple[str, int, str] | None = None) -> dict[str, Any]:
    result, updated, reason = last or ("activated", version, f"activated version {version}: 12 chunks received")
    return {"state": "online", "device_id": device, "fleet": "default", "channel": channel, "model_version": version,
            "model_expires": "2027-03-01T00:00:00Z", "model_stale": stale, "runtime": "ai_edge_litert",
            "last_update": {"result": result, "version": updated, "reason": reason, "at": at - 30},
            "health": {"requests": requests, "server_errors": 2, "model_errors": 0, "p50_ms": 1.7, "p99_ms": 8.25},
            "outcomes": outcomes_status(cells, 20, 1), "erasure": None, "at": at}


def fleet_statuses(now: float) -> dict[str, dict[str, Any]]:
    """Two canaries on 1002 (one converting 48 of 400 model requests, one 52 of 400), two stable
    devices on 1001 (90 of 1000 each), one offline, one with a hostile id that failed 1002."""
    return {
        "c-1": online("c-1", "canary", 1002, cell(1002, Arm.MODEL, 400, 48), cell(1002, Arm.HOLDOUT, 100, 8), at=now),
        "c-2": online("c-2", "canary", 1002, cell(1002, Arm.MODEL, 400, 52), at=now - 3),
        "s-1": online("s-1", "stable", 1001, cell(1001, Arm.MODEL, 1000, 90), at=now - 1, stale=True),
        "s-2": online("s-2", "stable", 1001, cell(1001, Arm.MODEL, 1000, 90), at=now - 600),
        "s-3": {"state": "offline"},
        HOSTILE_DEVICE: online("evil", "canary<i>", 1001, at=now,
                               last=("failed", 1002, "load_failed: <img src=x onerror=alert(1)>")),
    }


def check_contract(statuses: dict[str, dict[str, Any]]) -> None:
    validator = Draft202012Validator({"$ref": "#/components/schemas/AgentStatus",
                                      "components": document()["components"]})
    for device, status in statuses.items():
        errors = list(validator.iter_errors(status))
        assert not errors, (device, errors[0].message)


def curve(base: float) -> dict[str, float]:
    return {f"recall@{k}": round(min(1.0, base * k ** 0.5), 4) for k in (1, 2, 5, 10, 20, 50, 100)}


EVALUATION = {
    "test_from": "2011-11-01", "target": "purchase", "test_users": {"total": 1395},
    "served_row": "model (int8, LiteRT, as served)",
    **{name: {mode: {**curve(base * (0.6 if mode == "new" else 1.0)), "se(recall@20)": 0.007, "ndcg@10": base,
                     "ndcg@20": base * 1.2, "coverage@20": 0.4, "users": 1395} for mode in ("all", "new")}
       for name, base in (("model (float, Keras)", 0.08), ("model (int8, LiteRT, as served)", 0.079),
                          ("popularity", 0.03), ("repeat-purchase", 0.075))},
    "cold_start": {}, "among_new_items": {},
}


def runs_folder(where: Path, bundle: Path) -> Path:
    """``where/runs/r1``: an evaluation (as ``cloud-trainer evaluate`` writes it) and a real bundle."""
    run = where / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "evaluation.json").write_text(json.dumps(EVALUATION, indent=1))
    shutil.copytree(bundle, run / "bundle")
    return run.parent


@contextlib.contextmanager
def console(broker_url: str, *args: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """``cloud-trainer console`` on a free port; yields the port."""
    port = free_port()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"console-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "cloud_trainer.cli", "console", "--broker", broker_url,
                             "--port", str(port), *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})
    try:
        wait_for_port(port, 60, proc)  # type: ignore[arg-type]
        time.sleep(0.3)  # the retained statuses arrive right after the subscription
        yield port
    finally:
        stop(proc)  # type: ignore[arg-type]
        log.close()
