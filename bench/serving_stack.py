"""The REST stack side by side (issue 19, point 6): the same agent, model and shoppers under granian
(the default) and waitress (the fallback), measured from outside. Run by ``bench/serving.py --only stack``.

For each server, in alternating rounds (granian, waitress, granian, waitress) so both see the
same machine: ``hey`` at a fixed 500 requests/s (10 workers x 50/s, keep-alive) on
``GET /v1/recommendations`` for one seeded shopper (60 events; every shopper's history has the
same length, so the model does the same work), the same on ``GET /healthz`` (the HTTP stack with no
work), then ``wrk`` unpaced (8 connections, random seeded shoppers) for the maximum. Latency
percentiles come from hey's per-request CSV. The model has the default trained model's shape
(3,619 items, rank 256, history 200, repeat term). The load generators share the 2 cores.
"""

from __future__ import annotations

import csv
import io
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RATE, HEY_WORKERS = 500, 10


def hey(url: str, token: str, seconds: int) -> dict[str, float]:
    """A fixed-rate run: requests/s achieved, errors, p50/p90/p99/max latency in ms."""
    exe = shutil.which("hey")
    if exe is None:
        raise SystemExit("hey is not installed: apt-get install -y hey (make wrk installs it too)")
    out = subprocess.run([exe, "-z", f"{seconds}s", "-c", str(HEY_WORKERS), "-q", str(RATE // HEY_WORKERS),
                          "-H", f"Authorization: Bearer {token}", "-o", "csv", url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    times = sorted(float(r["response-time"]) * 1000 for r in rows)
    errors = sum(1 for r in rows if r["status-code"] != "200")
    if not times:
        return {"requests": 0, "errors": 0}
    return {
        "requests": len(times),
        "requests_per_s": round(len(times) / seconds, 1),
        "errors": errors,
        "p50_ms": round(statistics.median(times), 3),
        "p90_ms": round(times[int(0.90 * (len(times) - 1))], 3),
        "p99_ms": round(times[int(0.99 * (len(times) - 1))], 3),
        "max_ms": round(times[-1], 3),
    }


def bench_stack(work: Path, seconds: int, serving: Any, rounds: int = 2) -> dict[str, Any]:
    """Both servers over the bundle in ``work/bundle`` (see the module doc); ``serving`` is
    bench/serving.py's module, whose agent and wrk helpers this uses."""
    from devtools.processes import broker

    rss_kb, run_wrk, seed_histories, start_agent = (serving.rss_kb, serving.run_wrk, serving.seed_histories,
                                                    serving.start_agent)

    runs: dict[str, list[dict[str, Any]]] = {"granian": [], "waitress": []}
    with broker() as mqtt:
        subprocess.run([sys.executable, "-m", "cloud_trainer.cli", "publish", "--bundle", str(work / "bundle"),
                        "--broker", mqtt.url], check=True, cwd=Path(__file__).resolve().parent.parent,
                       capture_output=True)
        for n in range(rounds):
            for server in ("granian", "waitress"):
                shutil.rmtree(work / "agent", ignore_errors=True)
                agent = start_agent(work, mqtt.url, work / "signing.pub", (f"api.server={server}",))
                try:
                    agent.wait_ready(120)
                    seed_histories(agent, 1000, 60, serving.ONLINE_RETAIL_ITEMS)
                    print(f"round {n + 1}: {server}", flush=True)
                    url = f"{agent.base_url}/v1/recommendations?user_id=bench-7&k=10"
                    hey(url, agent.token, 3)  # warm-up
                    run = {
                        "recommendations_at_500_rps": hey(url, agent.token, seconds),
                        "healthz_at_500_rps": hey(f"{agent.base_url}/healthz", agent.token, max(5, seconds // 2)),
                        "max_throughput_wrk_8_connections": run_wrk(agent, work, 8, 10, None),
                    }
                    run["rss_kb"] = rss_kb(agent.proc.pid)
                    runs[server].append(run)
                    print(run, flush=True)
                finally:
                    agent.stop()
                time.sleep(1)

    def best_and_median(server: str, part: str, key: str) -> dict[str, float]:
        values = [r[part][key] for r in runs[server] if key in r[part]]
        return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}

    summary = {
        server: {
            "recommendations_p50_ms": best_and_median(server, "recommendations_at_500_rps", "p50_ms"),
            "recommendations_p99_ms": best_and_median(server, "recommendations_at_500_rps", "p99_ms"),
            "healthz_p99_ms": best_and_median(server, "healthz_at_500_rps", "p99_ms"),
            "max_requests_per_s": best_and_median(server, "max_throughput_wrk_8_connections", "requests_per_s"),
        }
        for server in runs
    }
    return {
        "what": f"hey at a fixed {RATE} requests/s for {seconds} s ({HEY_WORKERS} workers), then wrk unpaced with "
                "8 connections for 10 s; default trained model's shape; rounds alternate the servers",
        "runs": runs,
        "summary_over_rounds": summary,
        "targets": "p99 <= 5 ms at 500 requests/s, >= 1,500 requests/s maximum",
    }
