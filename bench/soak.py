"""Soak: an agent under concurrent recommendation and event traffic for 10 minutes, a model update each minute.

A real agent process receives every model over a real Mosquitto. wrk (C, keep-alive) sends paced,
mixed traffic for the whole run: about 200 requests/s from 20 connections with random pauses
(Poisson arrivals), one request in five a ``POST /v1/events`` (a shopper's new event), the others
``GET /v1/recommendations`` for one of 1,000 shoppers. The run is cut in one-minute windows (one
wrk run each, back to back); half-way through each window the trainer side publishes a new
version. Versions rotate over three different models (each with a changed catalogue), so every
update transfers a model file the agent does not have, loads a new interpreter and drops an old one.

Reports per minute: requests, errors (non-2xx and socket errors; must be 0), p50/p99 latency, the
version serving at the end, agent RSS; plus RSS sampled every 5 s and its trend over the second
half of the run (must not grow without bound). Baseline, side by side: the first window, before
any update. Writes bench/results/soak.json. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import publish  # noqa: E402
from serving import (  # noqa: E402
    ONLINE_RETAIL_ITEMS,
    ROOT,
    build_bundle,
    rss_kb,
    run_wrk,
    seed_histories,
    start_agent,
)

from devtools.processes import AgentProcess, broker  # noqa: E402
from shared.bundle import CATALOG_FILE, ENVELOPE_FILE, MODEL_FILE, parse_manifest  # noqa: E402
from shared.topics import CHANNELS  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "soak.json"
SHOPPERS = 1000
MODELS = 3  # rotated, so each update's model file is one the agent does not keep (it keeps 2)


def mixed_traffic_script(agent: AgentProcess, work: Path, pause_ms: int, n_items: int) -> Path:
    """wrk Lua: four recommendation requests for every event posted, for random shoppers."""
    script = work / "soak.lua"
    script.write_text(
        f'wrk.headers["Authorization"] = "Bearer {agent.token}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        "math.randomseed(os.time())\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        f"  local user = math.random(0, {SHOPPERS - 1})\n"
        "  if n % 5 == 0 then\n"
        f'    local item = string.format("SKU-%06d", math.random(0, {n_items - 1}))\n'
        '    return wrk.format("POST", "/v1/events", nil, \'{"user_id":"bench-\' .. user .. '
        '\'","item_id":"\' .. item .. \'","event":"view"}\')\n'
        "  end\n"
        '  return wrk.format("GET", "/v1/recommendations?user_id=bench-" .. user .. "&k=10")\n'
        "end\n"
        f"delay = function()\n  return math.floor(-{pause_ms} * math.log(1 - math.random()))\nend\n"
    )
    return script


def make_versions(work: Path, n_items: int, count: int) -> list[Path]:
    """Bundles of versions 2..count+1, rotating over MODELS models, each with its own catalogue."""
    from cloud_trainer.delivery.bundler import BundleOptions, write_bundle

    for m in range(MODELS):
        build_bundle(work / f"model-{m}", n_items, dim=256, history=200, factorized=True, seed=100 + m)
    key = work / "model-0" / "signing.key"
    bundles = []
    for version in range(1, count + 2):
        source = work / f"model-{version % MODELS}" / "bundle"
        manifest = parse_manifest(json.loads((source / ENVELOPE_FILE).read_bytes())["signed"])
        catalog = json.loads((source / CATALOG_FILE).read_bytes())
        catalog["items"][0]["title"] = f"Renamed in {version}"
        out = work / f"v{version}"
        write_bundle(out, (source / MODEL_FILE).read_bytes(), json.dumps(catalog).encode(), manifest.model, key,
                     BundleOptions(version=version, channels=CHANNELS), {"synthetic": True, "soak": True})
        bundles.append(out)
    return bundles


class RssSampler:
    def __init__(self, pid: int, every_s: float = 5.0) -> None:
        self.samples: list[tuple[float, int]] = []
        self._pid, self._every, self._stop = pid, every_s, threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((round(time.monotonic() - self._started, 1), rss_kb(self._pid)["VmRSS"]))
            self._stop.wait(self._every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def serving_version(agent: AgentProcess) -> int | None:
    status, body = agent.request("GET", "/readyz")
    return json.loads(body).get("model_version") if status == 200 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--items", type=int, default=ONLINE_RETAIL_ITEMS,
                        help="catalogue size of the rank-256 models (default: the Online Retail model's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="agent setting, e.g. history.cache_users=0 (repeatable)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (make soak does it)")
    with tempfile.TemporaryDirectory(prefix="edge-rec-soak-") as tmp:
        work = Path(tmp)
        print(f"building {MODELS} models of {args.items:,} items and {args.minutes + 1} signed versions ...",
              flush=True)
        bundles = make_versions(work, args.items, args.minutes)
        with broker() as mqtt:
            publish(bundles[0], mqtt.url)
            agent = start_agent(work, mqtt.url, work / "model-0" / "signing.pub", ("api.threads=4", *args.set))
            try:
                agent.wait_ready(120)
                seed_histories(agent, SHOPPERS, 20, args.items)
                script = mixed_traffic_script(agent, work, pause_ms=98, n_items=args.items)
                sampler = RssSampler(agent.proc.pid)
                windows = []
                for minute in range(args.minutes):
                    update = None
                    if minute > 0:  # the first window is the baseline: no update
                        bundle = bundles[minute]
                        update = threading.Timer(30, publish, (bundle, mqtt.url))
                        update.start()
                    result = run_wrk(agent, work, 20, 60, pause_ms=98, script=script)
                    if update is not None:
                        update.join()
                    version = serving_version(agent)
                    window = {"minute": minute + 1, "serving_version": version,
                              "expected_version": minute + 1, "rss_kb": rss_kb(agent.proc.pid)["VmRSS"], **result}
                    windows.append(window)
                    print(json.dumps(window), flush=True)
                sampler.stop()
                log = agent.log()
            finally:
                agent.stop()
        updates_failed = sum(1 for w in windows if w["serving_version"] != w["expected_version"])
        second_half = [(t, kb) for t, kb in sampler.samples if t >= sampler.samples[-1][0] / 2]
        slope = np.polyfit([t for t, _ in second_half], [kb for _, kb in second_half], 1)[0] * 60
        results = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "what": (f"{args.minutes} min of mixed traffic (~200 requests/s: 80% recommendations, 20% events) on "
                     f"an agent with a {args.items:,}-item rank-256 int8 model; a new version (rotating over "
                     f"{MODELS} models) published 30 s into every minute after the first"),
            "agent_settings": args.set or "profile defaults (dev.toml)",
            "errors": sum(int(w["errors"]) for w in windows),  # type: ignore[call-overload]
            "requests": sum(int(w["requests"]) for w in windows),  # type: ignore[call-overload]
            "updates_published": args.minutes - 1,
            "updates_not_serving_at_window_end": updates_failed,
            "baseline_window_no_update": windows[0],
            "p99_ms_by_minute": [w.get("p99_ms") for w in windows],
            "p99_ms_median_of_update_windows": statistics.median(
                [float(w["p99_ms"]) for w in windows[1:]]) if len(windows) > 1 else None,  # type: ignore[arg-type]
            "rss_kb_by_minute": [w["rss_kb"] for w in windows],
            "rss_kb_samples_every_5s": sampler.samples,
            "rss_trend_second_half_kb_per_min": round(float(slope), 1),
            "tracebacks_in_agent_log": log.count("Traceback"),
            "windows": windows,
        }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k not in ("windows", "rss_kb_samples_every_5s")}, indent=1))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
