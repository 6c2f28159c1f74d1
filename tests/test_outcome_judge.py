"""Rollouts judged by outcome: the always-valid test (pure), its error rate under peeking at every
batch of simulated traffic, the judge on crafted agent statuses, the fleet's outcome table, and one
rollout through the CLI against a real Mosquitto with crafted retained statuses (no agents)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from bundle_factory import FILES, manifest_for
from cloud_trainer.delivery.outcome_judge import (
    Comparison,
    OutcomeJudge,
    OutcomePolicy,
    compare,
    confidence_sequence,
)
from cloud_trainer.delivery.outcome_table import outcome_rows, outcome_table, wilson_interval
from cloud_trainer.delivery.verdict import Decision, Verdict
from devtools.processes import Broker
from harness import ROOT
from shared import topics
from shared.bundle import ENVELOPE_FILE, iso_utc
from shared.outcomes import Arm, OutcomeCell, outcomes_status
from shared.signing import load_private_key, sign

HOLDOUT = OutcomePolicy(Comparison.HOLDOUT)  # alpha 0.05, margin 0.1, 1000 requests a side


def cell(version: int, arm: Arm, requests: int, converted: int) -> OutcomeCell:
    return OutcomeCell(version, arm, requests=requests, impressions=3 * requests, clicks=requests // 10,
                       conversions=converted, converted_requests=converted, revenue=2.5 * converted)


# -- the interval, by hand ---------------------------------------------------------------------

def test_the_interval_matches_the_formula_worked_by_hand() -> None:
    # 50 of 1000 on each side, margin 0, alpha 0.05, tightest at 10,000 requests:
    #   q = 51/1002 = 0.050898, V = 2 * q(1-q)/1000 = 2 * 0.048307/1000 = 9.6614e-5
    #   rho^2 = (2 ln 20 + ln(2 ln 20 + 1))/10000 = (5.991465 + 1.944690)/10000 = 7.936155e-4
    #   n rho^2 = 2000 * 7.936155e-4 = 1.587231
    #   half = sqrt(V * 2 * 2.587231/1.587231 * (ln(2.587231)/2 + ln 20))
    #        = sqrt(9.6614e-5 * 3.260054 * (0.475284 + 2.995732)) = sqrt(1.09325e-3) = 0.033064
    interval = confidence_sequence((50, 1000), (50, 1000), alpha=0.05, margin=0.0, tuned_for_requests=10_000)
    assert interval.estimate == 0.0
    assert interval.upper == pytest.approx(0.033064, abs=2e-6) and interval.lower == pytest.approx(-0.033064, abs=2e-6)
    # the margin moves the estimate by m * p_r: 0.05 - 0.9 * 0.05 = 0.005
    assert confidence_sequence((50, 1000), (50, 1000), 0.05, 0.1, 10_000).estimate == pytest.approx(0.005)
    # more data, narrower; smaller alpha, wider
    wide = confidence_sequence((500, 10_000), (500, 10_000), 0.05, 0.0, 10_000)
    assert wide.upper - wide.lower < interval.upper - interval.lower
    strict = confidence_sequence((50, 1000), (50, 1000), 0.01, 0.0, 10_000)
    assert strict.upper > interval.upper


def test_an_arm_without_conversions_gets_no_zero_width_interval() -> None:
    interval = confidence_sequence((0, 2000), (0, 2000), 0.05, 0.1, 10_000)
    assert interval.lower < 0 < interval.upper


@pytest.mark.parametrize("bad", [((5, 0), (1, 10)), ((11, 10), (1, 10)), ((-1, 10), (1, 10))])
def test_impossible_counts_are_refused(bad: tuple[tuple[int, int], tuple[int, int]]) -> None:
    with pytest.raises(ValueError, match="counts must be"):
        confidence_sequence(*bad, alpha=0.05, margin=0.1, tuned_for_requests=10_000)


@pytest.mark.parametrize("changes", [{"alpha": 0.0}, {"alpha": 1.0}, {"margin": -0.1}, {"margin": 1.0},
                                     {"min_requests": 0}])
def test_a_policy_out_of_range_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        OutcomePolicy(Comparison.HOLDOUT, **changes)


# -- error rate and power under continuous peeking ---------------------------------------------

def simulate(p_model: float, p_holdout: float, policy: OutcomePolicy, holdout_share: float = 0.1,
             sequences: int = 200, batches: int = 300, batch: int = 500, seed: int = 18,
             decide: Any = None) -> list[tuple[Decision, int]]:
    """``sequences`` rollouts of ``batches`` batches of requests, each request Bernoulli in its arm
    (the holdout chosen with ``holdout_share``), looked at after every batch; per sequence the
    first decision and the requests seen then (WAIT, all requests when none came)."""
    rng = np.random.default_rng(seed)
    n_holdout = np.cumsum(rng.binomial(batch, holdout_share, size=(sequences, batches)), axis=1)
    n_model = np.arange(1, batches + 1) * batch - n_holdout
    x_model = np.cumsum(rng.binomial(np.diff(n_model, prepend=0), p_model), axis=1)
    x_holdout = np.cumsum(rng.binomial(np.diff(n_holdout, prepend=0), p_holdout), axis=1)
    results = []
    for s in range(sequences):
        outcome = (Decision.WAIT, batches * batch)
        for b in range(batches):
            model = cell(7, Arm.MODEL, int(n_model[s, b]), int(x_model[s, b]))
            holdout = cell(7, Arm.HOLDOUT, int(n_holdout[s, b]), int(x_holdout[s, b]))
            decision = (decide or (lambda m, h: compare(m, h, policy).decision))(model, holdout)
            if decision is not Decision.WAIT:
                outcome = (decision, (b + 1) * batch)
                break
        results.append(outcome)
    return results


def share(results: list[tuple[Decision, int]], *decisions: Decision) -> float:
    return sum(d in decisions for d, _ in results) / len(results)


@pytest.mark.parametrize(("p_holdout", "margin", "holdout_share"), [(0.05, 0.0, 0.1), (0.05, 0.1, 0.1),
                                                                    (0.02, 0.0, 0.5), (0.10, 0.2, 0.3)])
def test_at_the_margin_any_decision_is_wrong_and_at_most_alpha_of_them_happen(
        p_holdout: float, margin: float, holdout_share: float) -> None:
    """The model converts exactly (1 - margin) times the holdout's rate: promoting and aborting are
    both wrong. 200 rollouts of 150,000 requests, looked at every 500."""
    policy = OutcomePolicy(Comparison.HOLDOUT, alpha=0.05, margin=margin, min_requests=200)
    results = simulate((1 - margin) * p_holdout, p_holdout, policy, holdout_share)
    assert share(results, Decision.PROMOTE, Decision.ABORT) <= 0.05 + 0.02, results  # slack: ~1.3 sd of 200 draws


def test_the_same_check_catches_a_fixed_horizon_interval_looked_at_every_batch() -> None:
    """The simulation can fail: a 95% interval for one look, peeked at after every batch, decides
    wrongly far more often than 5% (which is why the rollout uses the always-valid one)."""
    policy = OutcomePolicy(Comparison.HOLDOUT, alpha=0.05, margin=0.0, min_requests=200)

    def naive(model: OutcomeCell, holdout: OutcomeCell) -> Decision:
        if min(model.requests, holdout.requests) < policy.min_requests:
            return Decision.WAIT
        p_m, p_h = model.converted_requests / model.requests, holdout.converted_requests / holdout.requests
        half = 1.96 * math.sqrt(p_m * (1 - p_m) / model.requests + p_h * (1 - p_h) / holdout.requests)
        return Decision.PROMOTE if p_m - p_h > half else Decision.ABORT if p_m - p_h < -half else Decision.WAIT

    results = simulate(0.05, 0.05, policy, decide=naive)
    assert share(results, Decision.PROMOTE, Decision.ABORT) > 0.15


def test_equal_rates_are_promoted_within_the_margin_and_rarely_aborted() -> None:
    results = simulate(0.05, 0.05, HOLDOUT, holdout_share=0.3)
    assert share(results, Decision.ABORT) <= 0.05
    assert share(results, Decision.PROMOTE) >= 0.8  # within 150,000 requests at a 30% holdout


@pytest.mark.parametrize(("p_model", "expected"), [(0.035, Decision.ABORT), (0.065, Decision.PROMOTE)])
def test_a_real_difference_is_decided_the_right_way_within_a_reasonable_traffic(
        p_model: float, expected: Decision) -> None:
    """30% worse or better than a 5% holdout rate, 10% of shoppers held out: every rollout decided
    rightly within 150,000 requests, half of them within 50,000."""
    results = simulate(p_model, 0.05, HOLDOUT)
    assert share(results, expected) == 1.0, results
    assert np.median([n for _, n in results]) <= 50_000


def test_no_decision_before_min_requests_on_each_side() -> None:
    policy = OutcomePolicy(Comparison.HOLDOUT, min_requests=500)
    awful = cell(7, Arm.MODEL, 5000, 0)
    assert compare(awful, cell(7, Arm.HOLDOUT, 499, 250), policy).decision is Decision.WAIT
    verdict = compare(awful, cell(7, Arm.HOLDOUT, 499, 250), policy, ("model", "holdout"))
    assert "waiting for 500 requests a side" in verdict.evidence and verdict.interval is None
    decided = compare(awful, cell(7, Arm.HOLDOUT, 500, 250), policy, ("model", "holdout"))
    assert decided.decision is Decision.ABORT and decided.interval is not None
    assert "model converts 0.00% of 5000 requests, holdout 50.00% of 500" in decided.evidence
    assert f"[{decided.interval.lower:+.4f}, {decided.interval.upper:+.4f}]" in decided.evidence
    assert "alpha 0.05" in decided.evidence and "less than 90% of holdout's rate" in decided.evidence


# -- the judge on agents' statuses -------------------------------------------------------------

def status(*cells: OutcomeCell, channel: str = "canary", version: int = 7) -> dict[str, Any]:
    return {"state": "online", "channel": channel, "model_version": version,
            "outcomes": outcomes_status(cells, 20, 0)}


def test_holdout_comparison_sums_the_canaries_only() -> None:
    judge = OutcomeJudge(7, ["c-1", "c-2"], HOLDOUT, stable_version=6)
    statuses = {
        "c-1": status(cell(7, Arm.MODEL, 3000, 60), cell(7, Arm.HOLDOUT, 400, 24)),
        "c-2": status(cell(7, Arm.MODEL, 3000, 60), cell(7, Arm.HOLDOUT, 600, 36)),
        "s-1": status(cell(7, Arm.HOLDOUT, 90_000, 0), cell(6, Arm.MODEL, 9000, 900), channel="stable", version=6),
    }
    verdict = judge.judge(statuses)
    assert "model converts 2.00% of 6000 requests, holdout 6.00% of 1000" in verdict.evidence
    assert verdict.decision is Decision.ABORT


def test_malformed_statuses_and_cells_are_ignored() -> None:
    good = status(cell(7, Arm.MODEL, 1500, 30), cell(7, Arm.HOLDOUT, 1000, 10))
    raw = good["outcomes"]["cells"]
    statuses: dict[str, Any] = {
        "c-1": good,
        "c-2": {"state": "online", "outcomes": "lots"},
        "c-3": {"state": "online", "outcomes": {**good["outcomes"], "schema": "edge-rec.outcomes/99"}},
        "c-4": {"state": "online", "outcomes": {**good["outcomes"], "cells": [
            {**raw[0], "requests": -5}, {**raw[0], "model_version": "7"}, {**raw[0], "arm": "treatment"},
            {**raw[0], "converted_requests": True}, {**raw[0], "revenue": float("nan")}, "cell", None,
            {**raw[0], "model_version": True}]}},
        "c-5": {"state": "offline"},
    }
    judge = OutcomeJudge(7, ["c-1", "c-2", "c-3", "c-4", "c-5", "c-6"], OutcomePolicy(Comparison.HOLDOUT), None)
    assert "model converts 2.00% of 1500 requests, holdout 1.00% of 1000" in judge.judge(statuses).evidence


def test_stable_comparison_counts_the_reference_from_the_rollouts_start() -> None:
    policy = OutcomePolicy(Comparison.STABLE, min_requests=1000)
    judge = OutcomeJudge(7, ["c-1"], policy, stable_version=6)
    before = {"c-1": status(),
              "s-1": status(cell(6, Arm.MODEL, 50_000, 5000), channel="stable", version=6),  # 10% before the start
              "s-2": status(cell(6, Arm.MODEL, 20_000, 2000), channel="stable", version=6),
              "c-9": status(cell(6, Arm.MODEL, 99_999, 0))}  # another canary's stable cells: not the reference
    assert "stable v6 0.00% of 0 requests" in judge.judge(before).evidence
    later = {"c-1": status(cell(7, Arm.MODEL, 4000, 80)),
             "s-1": status(cell(6, Arm.MODEL, 52_000, 5100), channel="stable", version=6),  # +2000, +100
             "s-2": status(cell(6, Arm.MODEL, 600, 30), channel="stable", version=6),  # its counts started again
             "s-3": status(cell(6, Arm.MODEL, 400, 20), channel="stable", version=6)}  # first seen now: from here
    verdict = judge.judge(later)
    assert "v7 converts 2.00% of 4000 requests, stable v6 5.00% of 2600" in verdict.evidence, verdict.evidence
    assert verdict.decision is Decision.ABORT


def test_stable_comparison_needs_a_stable_version() -> None:
    with pytest.raises(ValueError, match="needs a version on the stable channel"):
        OutcomeJudge(7, ["c-1"], OutcomePolicy(Comparison.STABLE), stable_version=None)


def test_the_gate_promotes_only_when_health_and_outcome_agree_and_keeps_the_first_decision() -> None:
    judge = OutcomeJudge(7, ["c-1"], HOLDOUT, stable_version=6)
    healthy = Verdict(Decision.PROMOTE, healthy=["c-1"], why="1 canaries healthy for 30s")
    soaking = Verdict(Decision.WAIT, waiting=["c-1"])
    failed = Verdict(Decision.ABORT, failed={"c-1": "offline"}, why="1 of 1 canaries failed: c-1: offline")
    few = {"c-1": status(cell(7, Arm.MODEL, 900, 90), cell(7, Arm.HOLDOUT, 100, 5))}
    good = {"c-1": status(cell(7, Arm.MODEL, 20_000, 2000), cell(7, Arm.HOLDOUT, 5000, 250))}
    bad = {"c-1": status(cell(7, Arm.MODEL, 20_000, 200), cell(7, Arm.HOLDOUT, 5000, 250))}

    assert judge.gate(healthy, few, timed_out=False).decision is Decision.WAIT  # healthy, not enough traffic
    late = judge.gate(healthy, few, timed_out=True)
    assert late.decision is Decision.ABORT and late.why.startswith("no outcome verdict before the timeout")
    assert judge.gate(failed, good, timed_out=False).why == failed.why  # health failures abort as before
    assert judge.gate(soaking, good, timed_out=False).decision is Decision.WAIT  # good, still soaking
    promoted = judge.gate(healthy, good, timed_out=False)
    assert promoted.decision is Decision.PROMOTE and "wrong with probability at most 5%" in promoted.why
    assert judge.gate(healthy, bad, timed_out=False).decision is Decision.PROMOTE  # the first decision stands

    worse = OutcomeJudge(7, ["c-1"], HOLDOUT, stable_version=6)
    aborted = worse.gate(soaking, bad, timed_out=False)  # no need to wait for the soak
    assert aborted.decision is Decision.ABORT and "model converts 1.00% of 20000 requests" in aborted.why


# -- the fleet's outcome table -----------------------------------------------------------------

def test_wilson_interval_by_hand() -> None:
    # 10 of 100, z = 1.96: centre (0.1 + 0.019208)/1.038415 = 0.114797,
    # half 1.96 * sqrt(0.0009 + 0.0000960)/1.038415 = 1.96 * 0.031560/1.038415 = 0.059569: [0.055228, 0.174366]
    low, high = wilson_interval(10, 100)
    assert low == pytest.approx(0.055228, abs=1e-5) and high == pytest.approx(0.174366, abs=1e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(50, 50)[1] == 1.0


def test_outcome_rows_sum_the_fleet_by_version_and_arm() -> None:
    statuses = {"c-1": status(cell(7, Arm.MODEL, 1000, 50), cell(7, Arm.HOLDOUT, 100, 3)),
                "s-1": status(cell(6, Arm.MODEL, 3000, 90), channel="stable", version=6),
                "s-2": status(cell(6, Arm.MODEL, 1000, 10), cell(7, Arm.MODEL, 1000, 30), channel="stable"),
                "s-3": {"state": "offline"}}
    rows = outcome_rows(statuses)
    assert [(r["model_version"], r["arm"], r["devices"], r["requests"]) for r in rows] == [
        (7, "holdout", 1, 100), (7, "model", 2, 2000), (6, "model", 2, 4000)]
    v7 = rows[1]
    assert v7["converted_requests"] == 80 and v7["conversion_rate"] == pytest.approx(0.04)
    assert v7["ctr"] == pytest.approx(200 / 6000) and v7["revenue"] == pytest.approx(200.0)
    assert v7["conversion_ci95"] == pytest.approx(list(wilson_interval(80, 2000)))
    table = outcome_table(rows)
    assert table.splitlines()[0].split()[:4] == ["version", "arm", "devices", "requests"]
    # Wilson, 80 of 2000: centre (0.04 + 0.00096)/1.00192 = 0.040882, half 1.96 * 0.0044091/1.00192 = 0.008625
    assert "4.00% (3.23%-4.95%)" in table and "3.33%" in table
    json.dumps(rows)  # what `fleet status --json` prints


# -- one rollout through the CLI, real Mosquitto, crafted statuses -----------------------------

def write_bundle(keys: Path, out: Path, version: int) -> Path:
    """A genuine, signed bundle of tiny files (the trainer never loads the model)."""
    now = datetime.now(UTC)
    manifest = manifest_for(FILES, version=version, chunk_size=1024, created=iso_utc(now - timedelta(hours=1)),
                            expires=iso_utc(now + timedelta(days=30)), channels=())
    out.mkdir(parents=True)
    for name, data in FILES.items():
        (out / name).write_bytes(data)
    (out / ENVELOPE_FILE).write_bytes(sign(manifest.to_json(), load_private_key((keys / "signing.key").read_bytes())))
    return out


def test_rollout_judged_by_holdout_aborts_a_version_that_converts_clearly_worse(
        broker: Broker, keys: Path, tmp_path: Path) -> None:
    key = str(keys / "signing.key")
    cli = [sys.executable, "-m", "cloud_trainer.cli"]
    stable = subprocess.run([*cli, "publish", "--bundle", str(write_bundle(keys, tmp_path / "v1000", 1000)),
                             "--channel", "stable", "--key", key, "--broker", broker.url],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert stable.returncode == 0, stable.stderr
    rollout = subprocess.Popen([*cli, "rollout", "--bundle", str(write_bundle(keys, tmp_path / "v1001", 1001)),
                                "--canary", "c-1", "--key", key, "--soak", "1", "--timeout", "60",
                                "--judge-outcome", "holdout", "--min-requests", "500", "--broker", broker.url],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="crafted-agents", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert rollout.stdout is not None
        first = rollout.stdout.readline()
        assert "version 1001 published to the canary channel" in first, first
        at = time.time()
        canary = {"state": "online", "channel": "canary", "device_id": "c-1", "model_version": 1001, "at": at,
                  "last_update": {"version": 1001, "result": "activated", "reason": "ok", "at": at},
                  "health": {"requests": 4000, "server_errors": 0},
                  "outcomes": outcomes_status([cell(1001, Arm.MODEL, 3000, 60), cell(1001, Arm.HOLDOUT, 1000, 60)],
                                              20, 0)}
        for device, payload in (("c-1", canary), ("s-1", status(cell(1000, Arm.MODEL, 9000, 450), channel="stable",
                                                                version=1000))):
            client.publish(topics.status_topic(topics.DEFAULT_PREFIX, "default", device), json.dumps(payload),
                           qos=1, retain=True).wait_for_publish(10)
        out, err = rollout.communicate(timeout=60)
    finally:
        if rollout.poll() is None:
            rollout.kill()
            rollout.wait()
        client.loop_stop()
        client.disconnect()
    assert rollout.returncode == 1, out + err
    assert "holdout: model converts 2.00% of 3000 requests, holdout 6.00% of 1000" in out  # the evidence line
    assert "rollout of version 1001 aborted: holdout: model converts 2.00%" in err
    assert "less than 90% of holdout's rate" in err and "wrong with probability at most 5%" in err
    assert "canary channel rolled back to version 1000's files as version 1002, which revokes version 1001" in out

    fleet = subprocess.run([*cli, "fleet", "status", "--json", "--wait", "0.5", "--broker", broker.url],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert fleet.returncode == 0, fleet.stderr
    shown = json.loads(fleet.stdout)
    assert sorted(shown["agents"]) == ["c-1", "s-1"]
    assert [(r["model_version"], r["arm"], r["requests"], r["converted_requests"]) for r in shown["outcomes"]] == [
        (1001, "holdout", 1000, 60), (1001, "model", 3000, 60), (1000, "model", 9000, 450)]
    table = subprocess.run([*cli, "fleet", "status", "--wait", "0.5", "--broker", broker.url],
                           capture_output=True, text=True, cwd=ROOT, timeout=60).stdout
    # Wilson, 60 of 3000: centre 0.020640/1.00128 = 0.020614, half 1.96 * 0.0025768/1.00128 = 0.005044
    assert "outcomes over the fleet" in table and "2.00% (1.56%-2.57%)" in table, table
