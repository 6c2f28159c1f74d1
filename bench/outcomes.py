"""Rollouts judged by outcome on a simulated fleet: a bad model aborted and a good one promoted
by what simulated shoppers do, while both are healthy by every 5xx measure.

Runs :mod:`devtools.outcome_rollouts` (3 real agents on one real Mosquitto, shoppers who click
and cart by a stated model of taste, ``cloud-trainer rollout --judge-outcome holdout``; the
canaries keep the previous version as the holdout's control). Reports each rollout's decision,
its wall time here, the requests the canaries served on the new version until the decision and
their conversion rates per arm, and what that means in hours at a store's traffic. Writes
``bench/results/outcomes.json``; not a test (``tests/test_outcome_simulation.py`` runs it short).

    python bench/outcomes.py [--holdout-share 0.2] [--alpha 0.05]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.outcome_rollouts import REQUESTS_PER_VISIT, RolloutRun, Scenario, run  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "outcomes.json"
TRAFFIC = (20, 100, 500)  # shoppers per hour per store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holdout-share", type=float, default=0.2)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--margin", type=float, default=0.1)
    args = parser.parse_args()
    scenario = Scenario(holdout_share=args.holdout_share, alpha=args.alpha, margin=args.margin, timeout_s=600)
    with tempfile.TemporaryDirectory(prefix="bench-outcomes-") as work:
        figures = run(scenario, Path(work))
    print("\n| rollout | decision | seconds here | canary requests (model / holdout) | conversion (model / holdout) | "
          + " | ".join(f"hours at {t} shoppers/h/store" for t in TRAFFIC) + " |")
    print("|" + " --- |" * (5 + len(TRAFFIC)))
    for raw in figures["rollouts"]:
        r = RolloutRun(**raw)
        hours = [r.hours_at(t, scenario.canaries) for t in TRAFFIC]
        raw["hours_at"] = {str(t): round(h, 2) for t, h in zip(TRAFFIC, hours, strict=True)}
        print(f"| {r.model} (v{r.version}) | {r.decision} | {r.seconds:.0f} | {r.requests['model']} / "
              f"{r.requests['holdout']} | {r.conversion['model']:.3f} / {r.conversion['holdout']:.3f} | "
              + " | ".join(f"{h:.1f}" for h in hours) + " |")
    figures["requests_per_visit"] = REQUESTS_PER_VISIT
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    ok = [r["decision"] for r in figures["rollouts"]] == ["abort", "promote"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
