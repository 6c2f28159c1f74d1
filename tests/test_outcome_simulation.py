"""The outcome loop end to end, short: three real agents on a real Mosquitto, simulated shoppers
with a known model of taste, and two rollouts judged by outcome alone: a bad model (healthy by
every 5xx measure) is aborted, a good one promoted (``bench/outcomes.py`` runs it in full)."""

from __future__ import annotations

from pathlib import Path

from devtools.outcome_rollouts import Scenario, run


def test_outcomes_abort_the_bad_model_and_promote_the_good_one(tmp_path: Path) -> None:
    figures = run(Scenario(timeout_s=240), tmp_path, say=print)
    bad, good = figures["rollouts"]
    assert figures["http_errors"] == 0  # nobody could have told them apart by errors
    assert bad["decision"] == "abort", bad["output"]
    assert good["decision"] == "promote", good["output"]
    assert good["conversion"]["model"] > bad["conversion"]["model"]  # the good one earns more
    assert bad["conversion"]["model"] < bad["conversion"]["holdout"]  # and the bad one less than its control
    assert any("abort" in line.lower() for line in bad["output"])  # the evidence is printed
    for rollout in (bad, good):  # decided on the counts of the evidence line, after the minimum each side
        assert min(rollout["requests"].values()) >= 200, rollout["requests"]
