"""Outcome-judged rollouts on a simulated fleet, end to end (``bench/outcomes.py``; a short run
in ``tests/test_outcome_simulation.py``).

A generated shop is split over ``stores`` edge agents (real processes, one real Mosquitto); the
first ``canaries`` are on the canary channel. A good model (trained on the shop's events) is
the stable version; then two rollouts run with ``cloud-trainer rollout --judge-outcome holdout``
while simulated shoppers (:mod:`devtools.outcome_simulation`) use the agents. The agents keep
the version a new one replaces as the holdout's control (``experiment.control = "previous"``),
so a canary compares the new version with the old one on the same shoppers at the same time:

1. a bad model (the same events after a broken item join): healthy by every 5xx measure, it must
   be aborted on outcome alone;
2. the good model again, as a new version: it must be promoted.

Each rollout reports its decision, wall time, and the requests the canaries served on the new
version until the decision; from those, the decision time at a given traffic (shoppers per hour
per store, :data:`REQUESTS_PER_VISIT` recommendation requests each).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cloud_trainer.delivery.broker import BrokerConnection, BrokerOptions
from cloud_trainer.delivery.fleet_status import FleetWatcher
from devtools.outcome_simulation import Shoppers, histories, taste_of, write_relabelled
from devtools.processes import AgentProcess, broker
from devtools.synthetic_shop import ShopSpec, generate, user_id, write
from devtools.trainer_cli import output as cli
from devtools.trainer_cli import run as run_cli
from shared.outcomes import Arm, fleet_cells

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "firmware_configs" / "dev.toml"
REQUESTS_PER_VISIT = 3
STABLE_VERSION, BAD_VERSION, GOOD_VERSION = 100, 200, 300
#: The counts in the rollout's evidence line (cloud_trainer.delivery.outcome_judge).
_EVIDENCE = re.compile(r"model converts [\d.]+% of (?P<model>\d+) requests, "
                       r"holdout [\d.]+% of (?P<holdout>\d+) requests")


@dataclass
class Scenario:
    spec: ShopSpec = field(default_factory=lambda: ShopSpec(users=2500, items=3000, categories=100, tastes=20,
                                                            seed=11))
    stores: int = 3
    canaries: int = 2
    holdout_share: float = 0.2
    alpha: float = 0.05
    margin: float = 0.1
    min_requests: int = 200
    soak_s: float = 5.0
    timeout_s: float = 300.0


@dataclass
class RolloutRun:
    model: str
    version: int
    decision: str
    seconds: float
    requests: dict[str, int]  # arm -> requests the canaries served on the version when it was decided
    conversion: dict[str, float]  # arm -> converted requests / requests on the canaries
    output: list[str]

    def hours_at(self, shoppers_per_hour: float, canaries: int) -> float:
        return sum(self.requests.values()) / (canaries * shoppers_per_hour * REQUESTS_PER_VISIT)


def _model(events: Path, items: Path, work: Path, name: str, key: Path, version: int) -> Path:
    run, bundle = work / name, work / f"bundle-{version}"
    cli("train", "--events", str(events), "--items", str(items), "--out", str(run), "--no-tune")
    cli("export", "--run", str(run), "--key", str(key), "--out", str(bundle), "--version", str(version))
    return bundle


def _agent(url: str, work: Path, keys: Path, store: int, channel: str, scenario: Scenario) -> AgentProcess:
    folder = work / f"store-{store}"
    folder.mkdir()
    return AgentProcess(PROFILE, [
        f'mqtt.url="{url}"', f'agent.data_dir="{folder / "data"}"', f'model.trusted_public_key="{keys}"',
        f'agent.device_id="store-{store}"', f'agent.channel="{channel}"', "mqtt.status_interval_s=1",
        f"experiment.holdout_share={scenario.holdout_share}", "experiment.min_shoppers=5",
        'experiment.control="previous"'], folder)


def _roll_out(url: str, bundle: Path, key: Path, canaries: list[str], scenario: Scenario, watcher: FleetWatcher,
              model: str, version: int, say: Callable[[str], None]) -> RolloutRun:
    started = time.monotonic()
    done = run_cli("rollout", "--broker", url, "--client-id", f"rollout-{version}", "--bundle", str(bundle),
                   "--key", str(key), "--canary", ",".join(canaries), "--judge-outcome", "holdout",
                   "--alpha", str(scenario.alpha), "--margin", str(scenario.margin),
                   "--min-requests", str(scenario.min_requests), "--soak", str(scenario.soak_s),
                   "--timeout", str(scenario.timeout_s))
    seconds = time.monotonic() - started
    output = (done.stdout + done.stderr).strip().splitlines()
    cells = fleet_cells(watcher.statuses(), canaries)
    requests = {arm.value: cells[(version, arm)].requests if (version, arm) in cells else 0 for arm in Arm}
    decided = [m for line in output if line.startswith(("ABORT", "promoting")) and (m := _EVIDENCE.search(line))]
    if decided:  # the counts the decision was taken on (the statuses above are from after it)
        requests = {Arm.MODEL.value: int(decided[-1]["model"]), Arm.HOLDOUT.value: int(decided[-1]["holdout"])}
    conversion = {arm.value: (cells[(version, arm)].converted_requests / max(cells[(version, arm)].requests, 1)
                              if (version, arm) in cells else 0.0) for arm in Arm}
    decision = {0: "promote", 1: "abort"}.get(done.returncode, f"exit {done.returncode}")
    say(f"{model} model (version {version}): {decision.upper()} after {seconds:.0f} s, canary requests {requests}, "
        f"conversion {conversion}")
    return RolloutRun(model, version, decision, round(seconds, 1), requests, conversion, output)


def run(scenario: Scenario, work: Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The scenario of the module's docstring; returns its figures."""
    spec = scenario.spec
    keys = work / "keys"
    cli("keygen", "--out", str(keys))
    events, items = write(spec, work / "shop")
    bad_events = work / "shop" / "relabelled.csv.gz"
    write_relabelled(events, bad_events, spec.items, seed=spec.seed + 1)
    say("training the good model and the bad one (a broken item join)")
    key = keys / "signing.key"
    good = _model(events, items, work, "good", key, STABLE_VERSION)
    bad = _model(bad_events, items, work, "bad", key, BAD_VERSION)
    good_again = work / f"bundle-{GOOD_VERSION}"
    cli("export", "--run", str(work / "good"), "--key", str(key), "--out", str(good_again),
             "--version", str(GOOD_VERSION))
    shop = generate(spec)
    stores = [list(range(s, spec.users, scenario.stores)) for s in range(scenario.stores)]
    canaries = [f"store-{s}" for s in range(scenario.canaries)]
    with broker() as mosquitto:
        cli("publish", "--broker", mosquitto.url, "--bundle", str(good), "--channel", "stable", "--key", str(key))
        agents = [_agent(mosquitto.url, work, keys / "signing.pub", s, "canary" if s < scenario.canaries else "stable",
                         scenario) for s in range(scenario.stores)]
        traffic: list[Shoppers] = []
        connection = BrokerConnection(BrokerOptions(url=mosquitto.url, client_id="outcome-watcher"))
        try:
            watcher = FleetWatcher(connection, "default")
            for agent, users in zip(agents, stores, strict=True):
                agent.wait_ready(90)
                body = histories(shop, users)
                for start in range(0, len(body), 1000):
                    agent.request("POST", "/v1/events", json.dumps({"events": body[start:start + 1000]}).encode())
                taste = taste_of(shop, spec, users)
                traffic.append(Shoppers(agent.port, agent.token, [user_id(u) for u in users], taste, seed=agent.port))
            for shoppers in traffic:
                shoppers.start()
            say(f"{scenario.stores} agents serving simulated shoppers; canaries: {', '.join(canaries)}")
            runs = [_roll_out(mosquitto.url, bad, key, canaries, scenario, watcher, "bad", BAD_VERSION, say),
                    _roll_out(mosquitto.url, good_again, key, canaries, scenario, watcher, "good", GOOD_VERSION, say)]
        finally:
            for shoppers in traffic:
                shoppers.stop()
            connection.close()
            for agent in agents:
                agent.stop()
    served = sum(s.requests for s in traffic)
    return {"scenario": {**asdict(scenario), "spec": asdict(spec)},
            "requests_served": served, "http_errors": sum(s.errors for s in traffic),
            "rollouts": [asdict(r) for r in runs]}

