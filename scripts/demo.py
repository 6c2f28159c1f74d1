"""`make demo`: the whole path on real data, end to end, with progress at every step.

Online Retail -> prepare -> train (TensorFlow) -> export int8 TFLite -> sign -> publish over a local
Mosquitto -> edge agent (LiteRT) receives, verifies, activates -> a real customer's purchases are
posted over REST -> their recommendations are printed with titles. Everything is shut down after.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devtools.processes import AgentProcess, Broker  # noqa: E402

CUSTOMER = "17850"  # the first customer in the data; any CustomerID works


def step(n: int, text: str) -> None:
    print(f"\n[{n}/8] {text}", flush=True)


def run(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if result.returncode != 0:
        raise SystemExit(f"demo: step failed: {' '.join(args)} (exit {result.returncode})")


def customer_purchases(events: Path, customer: str, limit: int) -> list[dict[str, str]]:
    with gzip.open(events, "rt", encoding="utf-8", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["user_id"] == customer]
    return rows[-limit:]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--work", type=Path, default=ROOT / "demo-work")
    parser.add_argument("--tune-budget", type=float, default=60.0,
                        help="seconds the trainer may spend choosing its settings (cloud-trainer's default: 180)")
    args = parser.parse_args()
    source = args.datasets / "online_retail" / "online_retail.csv.gz"
    if not source.exists():
        print(f"demo: {source} not found. Download UCI Online Retail (dataset 352) and point DATASETS= at a "
              "folder holding online_retail/online_retail.csv.gz", file=sys.stderr)
        return 2
    started = time.monotonic()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    step(1, "making the model-signing key pair")
    run("cloud_trainer.cli", "keygen", "--out", str(work / "keys"))

    step(2, f"preparing Online Retail from {source}")
    run("cloud_trainer.cli", "prepare", "online-retail", "--input", str(source), "--out", str(work / "data"))

    step(3, f"training the embedding dot-product model, its settings chosen on the last weeks of the data "
            f"(at most {args.tune_budget:g} s; a line per trial)")
    run("cloud_trainer.cli", "train", "--events", str(work / "data/events.csv.gz"), "--items",
        str(work / "data/items.csv"), "--out", str(work / "run"), "--tune-budget", str(args.tune_budget))

    step(4, "exporting int8 TFLite (scoring and top-K in the graph), checking parity, signing the bundle")
    run("cloud_trainer.cli", "export", "--run", str(work / "run"), "--key", str(work / "keys/signing.key"),
        "--out", str(work / "bundle"), "--variant", "int8")
    model_size = (work / "bundle/model.tflite").stat().st_size

    step(5, "starting Mosquitto on a free loopback port and publishing the bundle")
    broker = Broker(work / "broker")
    agent: AgentProcess | None = None
    try:
        print(f"broker at {broker.url}")
        run("cloud_trainer.cli", "publish", "--bundle", str(work / "bundle"), "--key", str(work / "keys/signing.key"),
            "--broker", broker.url)

        step(6, "starting an edge agent (LiteRT, encrypted history, REST on 127.0.0.1)")
        agent = AgentProcess(
            ROOT / "firmware_configs/dev.toml",
            [f'mqtt.url="{broker.url}"', f'agent.data_dir="{work / "agent"}"',
             f'model.trusted_public_key="{work / "keys/signing.pub"}"'],
            work,
        )
        agent.wait_ready(60)
        print(f"agent ready at {agent.base_url}: {agent.request('GET', '/readyz')[1].decode().strip()}")

        step(7, f"posting customer {CUSTOMER}'s last purchases to the agent")
        purchases = customer_purchases(work / "data/events.csv.gz", CUSTOMER, 10)
        # The purchases are from 2011, older than the profile's retention (history.max_age_days), so
        # they are replayed as if they had just happened, one minute apart, in their real order.
        now = time.time()
        events = [{"user_id": r["user_id"], "item_id": r["item_id"], "event": r["event"],
                   "timestamp": now - 60 * (len(purchases) - n)} for n, r in enumerate(purchases)]
        print(f"(replayed as the last {len(purchases)} minutes: the real 2011 dates are past the retention)")
        status, body = agent.request("POST", "/v1/events", json.dumps({"events": events}).encode())
        print(f"POST /v1/events -> {status} {body.decode().strip()}")
        titles = json.loads((work / "bundle/catalog.json").read_text())["items"]
        by_id = {item["id"]: item["title"] for item in titles}
        for r in purchases[-5:]:
            print(f"  bought  {r['item_id']:>8}  {by_id.get(r['item_id'], '?')}")

        step(8, f"asking the agent for customer {CUSTOMER}'s recommendations over HTTP")
        for query in ("k=10", "k=10&exclude=purchased"):  # what they buy again; then only new items
            path = f"/v1/recommendations?user_id={CUSTOMER}&{query}"
            status, body = agent.request("GET", path)
            answer = json.loads(body)
            print(f"GET {path} -> {status}, model version {answer['model_version']}, fallback {answer['fallback']}")
            for n, item in enumerate(answer["items"], 1):
                title = item["title"][:44]
                score = "popular" if item["score"] is None else f"score {item['score']:.3f}"
                print(f"  {n:2d}. {item['id']:>8}  {title:44s}  £{item['price']:<6}  {score}")
                if item["because"] and item["because"]["id"] == item["id"]:
                    print("      bought before")
                elif item["because"]:
                    print(f"      because of {item['because']['id']} {item['because']['title'][:40]}")
        latencies = []
        for _ in range(200):
            t = time.perf_counter()
            agent.request("GET", path)
            latencies.append((time.perf_counter() - t) * 1000)
        print(f"\nREST latency over loopback (200 requests, this client included): "
              f"median {statistics.median(latencies):.2f} ms, p99 {sorted(latencies)[197]:.2f} ms")
    finally:
        if agent is not None:
            agent.stop()
        broker.stop()
    print(f"model file {model_size} bytes; demo wall time {time.monotonic() - started:.0f} s; "
          f"everything stopped. Work files are in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
