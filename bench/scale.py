"""Wall time and peak memory of each stage of the trainer on generated shops of 1M, 10M and 100M events.

For each size a seeded shop is generated (``devtools/synthetic_shop.py``, sized by
:func:`~devtools.synthetic_shop.sized`: 10 events a shopper seen in the events and 50 events a
catalogue item, so 10M events are 1M shoppers and 200k items, 100M events 10M and 2M; Parquet
events, an items CSV), then each stage runs as a child process, timed, its peak RSS taken from
the kernel's accounting of that child (``os.wait4``: the largest resident set of the child or of
any process it waited for):

- ``generate``: the generator's CLI (not a trainer stage; recorded for scale);
- ``prepare``: :func:`cloud_trainer.data.events_io.read_events` and the sparse shopper-item matrix
  (:func:`cloud_trainer.models.factorized.shopper_item_matrix`);
- ``train``: ``cloud-trainer train --test-from`` with the default model and settings search;
- ``export``: ``cloud-trainer export`` (variant auto: int8, float16 where int8 fails its checks;
  signed with a key made for the run);
- ``evaluate``: ``cloud-trainer evaluate`` (the served model beside the baselines).

A stage that fails or times out is recorded with its exit and the last lines of its output, and
the stages after it that need its result are recorded as skipped; the bench goes on. Results go
to ``bench/results/scale.json``: per size the shape and every stage's seconds and peak GB, the
machine, a scaling curve (seconds and GB per million events, and the marginal cost between
sizes) and, for 100M events unless it was run, a projection from the measured cost, labelled as
such (a projection of this one-machine path, not of a distributed one).

    python bench/scale.py                    # 1M and 10M events
    python bench/scale.py --with-100m        # and 100M
    python bench/scale.py --sizes 200k/20k/20k --out /tmp/scale.json   # EVENTS[/SHOPPERS/ITEMS]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("generate", "prepare", "train", "export", "evaluate")
NEEDS = {"prepare": "generate", "train": "generate", "export": "train", "evaluate": "train"}
TEST_FROM = "2024-06-01"  # the generated shops run from 2024-01-01 for 180 days
EVENTS_PER_SHOPPER, EVENTS_PER_ITEM = 10, 50
GB = 1e9
PROGRESS_EVERY = 30.0  # seconds between progress lines of a running stage


def _count(text: str) -> int:
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def _label(events: int) -> str:
    return f"{events / 1e6:g}M" if events >= 10**6 else f"{events / 1e3:g}k"


def shape(size: str) -> tuple[int, int, int]:
    """(events, shoppers, items) of ``EVENTS`` (proportional shape) or ``EVENTS/SHOPPERS/ITEMS``."""
    parts = [_count(part) for part in size.split("/")]
    if len(parts) == 1:
        return parts[0], parts[0] // EVENTS_PER_SHOPPER, parts[0] // EVENTS_PER_ITEM
    if len(parts) != 3:
        raise SystemExit(f"--sizes: {size!r} is neither EVENTS nor EVENTS/SHOPPERS/ITEMS")
    return parts[0], parts[1], parts[2]


def prepare(events: Path) -> dict[str, Any]:
    """The prepare stage, run inside its child: the events table and the sparse shopper-item matrix."""
    import resource

    import numpy as np

    from cloud_trainer.data.events_io import KINDS_BY_CODE, read_events
    from cloud_trainer.models.factorized import shopper_item_matrix
    from shared.events import EVENT_WEIGHTS

    imports_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    started = time.monotonic()
    table = read_events(events)
    read_seconds = time.monotonic() - started
    matrix = shopper_item_matrix(table, np.asarray([EVENT_WEIGHTS[kind] for kind in KINDS_BY_CODE], np.float32))
    return {"events": len(table), "shoppers": len(table.user_ids), "items": len(table.item_ids),
            "nonzeros": int(matrix.nnz), "rss_after_imports_gb": round(imports_gb, 3),
            "read_seconds": round(read_seconds, 2),
            "matrix_seconds": round(time.monotonic() - started - read_seconds, 2)}


def _rss_now(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return 0.0


def run_stage(name: str, command: list[str], log: Path, timeout: float, rss_limit_gb: float) -> dict[str, Any]:
    """Run ``command`` as a child (its output in ``log``): status, seconds, peak RSS and, on
    failure, the last lines of its output. A child past ``timeout`` seconds or ``rss_limit_gb``
    (polled up to every half second) is stopped, before the kernel's out-of-memory killer picks a
    process on a shared machine."""
    print(f"  {name}: {' '.join(command[1:] if command[0] == sys.executable else command)}", flush=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    with open(log, "wb") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                 start_new_session=True)
        stopped, said = "", started
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            now, rss = time.monotonic(), _rss_now(child.pid)
            if not stopped and (now - started > timeout or rss > rss_limit_gb):
                stopped = f"timed out after {timeout:g} s" if now - started > timeout else \
                    f"stopped at {rss:.1f} GB RSS, over the {rss_limit_gb:g} GB limit"
                os.killpg(child.pid, signal.SIGKILL)  # the child's own process group
            if now - said >= PROGRESS_EVERY:
                said = now
                print(f"    ... {now - started:.0f} s, RSS {rss:.2f} GB", flush=True)
            time.sleep(min(0.5, 0.02 + (now - started) / 20))  # finer while short stages may end
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
    result: dict[str, Any] = {"seconds": round(time.monotonic() - started, 1),
                              "peak_rss_gb": round(usage.ru_maxrss * 1024 / GB, 3)}
    if child.returncode == 0 and not stopped:
        result["status"] = "ok"
        print(f"    ok in {result['seconds']} s, peak RSS {result['peak_rss_gb']} GB", flush=True)
    else:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        killed = f" (killed by {signal.Signals(-child.returncode).name})" if child.returncode < 0 else ""
        result |= {"status": stopped or f"failed{killed}", "exit": child.returncode, "error": tail}
        print(f"    {result['status']} (exit {child.returncode}) after {result['seconds']} s: "
              f"{tail[-1] if tail else ''}", flush=True)
    return result


def run_point(size: str, work: Path, seed: int, timeout: float, rss_limit_gb: float,
              train_args: list[str]) -> dict[str, Any]:
    from devtools.synthetic_shop import sized

    events, shoppers, items = shape(size)
    folder = work / _label(events)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"== {_label(events)} events: sizing the shop ({shoppers} shoppers, {items} items)", flush=True)
    spec = sized(events, shoppers, items, seed)
    shop, run, logs = folder / "shop", folder / "run", folder / "logs"
    logs.mkdir(exist_ok=True)
    python = sys.executable
    commands = {
        "generate": [python, "devtools/synthetic_shop.py", "--out", str(shop), "--format", "parquet",
                     *(f"--{k.replace('_', '-')}={v}" for k, v in asdict(spec).items())],
        "prepare": [python, "bench/scale.py", "--prepare", str(shop / "events.parquet"),
                    "--prepare-out", str(folder / "prepare.json")],
        "train": [python, "-m", "cloud_trainer.cli", "train", "--events", str(shop / "events.parquet"),
                  "--items", str(shop / "items.csv"), "--out", str(run), "--test-from", TEST_FROM, *train_args],
        "export": [python, "-m", "cloud_trainer.cli", "export", "--run", str(run), "--key",
                   str(work / "keys" / "signing.key"), "--out", str(folder / "bundle")],
        "evaluate": [python, "-m", "cloud_trainer.cli", "evaluate", "--events", str(shop / "events.parquet"),
                     "--run", str(run), "--out", str(folder / "evaluation.md")],
    }
    stages: dict[str, Any] = {}
    for name in STAGES:
        need = NEEDS.get(name)
        if need and stages[need]["status"] != "ok":
            stages[name] = {"status": f"skipped: {need} did not complete"}
            print(f"  {name}: skipped ({need} did not complete)", flush=True)
            continue
        stages[name] = run_stage(name, commands[name], logs / f"{name}.log", timeout, rss_limit_gb)
    if stages["prepare"]["status"] == "ok":
        stages["prepare"]["details"] = json.loads((folder / "prepare.json").read_text())
    if stages["evaluate"]["status"] == "ok":
        stages["evaluate"]["table"] = (folder / "evaluation.md").read_text()
    measured = stages["prepare"].get("details", {})
    return {"size": _label(events), "events_target": events,
            "shape": {"events": measured.get("events"), "shoppers": measured.get("shoppers"),
                      "items_with_events": measured.get("items"), "catalogue_items": spec.items,
                      "spec": asdict(spec)},
            "events_file_bytes": (shop / "events.parquet").stat().st_size
            if (shop / "events.parquet").exists() else None,
            "stages": stages}


def curve(points: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per stage, for each size where it completed: seconds and peak GB per million events, and
    from the next smaller completed size the marginal cost (what a million more events added;
    free of the fixed cost of starting Python and importing TensorFlow)."""
    out: dict[str, list[dict[str, float]]] = {}
    for name in STAGES:
        done = [(events / 1e6, stage) for events, stage in _completed(points, name)]
        for n, (millions, stage) in enumerate(done):
            entry = {"events_millions": millions, "seconds": stage["seconds"], "peak_rss_gb": stage["peak_rss_gb"],
                     "seconds_per_million": round(stage["seconds"] / millions, 2),
                     "gb_per_million": round(stage["peak_rss_gb"] / millions, 4)}
            smaller, before = done[n - 1] if n else (millions, stage)
            if millions > smaller:
                entry["marginal_seconds_per_million"] = round((stage["seconds"] - before["seconds"])
                                                              / (millions - smaller), 2)
                entry["marginal_gb_per_million"] = round((stage["peak_rss_gb"] - before["peak_rss_gb"])
                                                         / (millions - smaller), 4)
            out.setdefault(name, []).append(entry)
    return out


def project(points: list[dict[str, Any]], events: int) -> dict[str, Any]:
    """Each stage at ``events`` from the measured cost: a line through the two largest sizes where
    it completed (fixed cost + per-event cost), or in proportion to events from a single one."""
    out: dict[str, Any] = {"label": f"PROJECTION, not measured: {_label(events)} events extrapolated from the "
                                    "measured points (a line through the two largest completed sizes, or "
                                    "proportional to events from one), on this one machine; it assumes each "
                                    "stage's cost grows linearly with events from there"}
    for name in STAGES:
        done = _completed(points, name)
        if not done:
            out[name] = {"status": "no measured point to project from"}
            continue
        (x0, s0), (x1, s1) = done[-2] if len(done) >= 2 else done[-1], done[-1]
        figures: dict[str, Any] = {}
        for key in ("seconds", "peak_rss_gb"):
            slope = (s1[key] - s0[key]) / (x1 - x0) if x1 > x0 else -1.0
            # a line where it rises; where two points do not (noise at small sizes): proportional
            value = s1[key] + slope * (events - x1) if slope >= 0 else s1[key] * events / x1
            figures[key] = round(value, 1 if key == "seconds" else 2)
        method = "a line through two sizes" if x1 > x0 else "proportional to one size (fixed costs overstated)"
        out[name] = figures | {"method": method, "from_sizes": sorted({_label(x0), _label(x1)}, key=_count)}
    return out


def _completed(points: list[dict[str, Any]], name: str) -> list[tuple[int, dict[str, Any]]]:
    """(events, stage result) of the sizes where stage ``name`` completed, smallest first."""
    done = [(p["events_target"], p["stages"][name]) for p in points if p["stages"][name].get("status") == "ok"]
    return sorted(done, key=lambda pair: pair[0])


def _ram_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "ram_gb": round(_ram_gb(), 1),
            "platform": f"{platform.machine()}, {platform.system()} {platform.release()}",
            "python": platform.python_version(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,10M",
                        help="comma-separated EVENTS (10 a shopper, 50 an item) or EVENTS/SHOPPERS/ITEMS "
                             "(k and M for thousands and millions)")
    parser.add_argument("--with-100m", action="store_true", help="also run 100M events (10M shoppers, 2M items)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stage-timeout", type=float, default=4 * 3600.0, metavar="SECONDS")
    parser.add_argument("--rss-limit-gb", type=float, default=round(0.7 * _ram_gb(), 1),
                        help="stop a stage whose RSS passes this (default: 70%% of RAM)")
    parser.add_argument("--train-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for cloud-trainer train (repeat it: --train-arg=--tune-budget "
                             "--train-arg=60)")
    parser.add_argument("--work", type=Path, help="keep the shops, runs and logs here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # the prepare stage's child
    parser.add_argument("--prepare-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        args.prepare_out.write_text(json.dumps(prepare(args.prepare)))
        return 0
    sizes = [size.strip() for size in args.sizes.split(",") if size.strip()] + (["100M"] if args.with_100m else [])
    results: dict[str, Any] = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
                               "rss_limit_gb": args.rss_limit_gb, "stage_timeout_seconds": args.stage_timeout,
                               "shape_rule": f"{EVENTS_PER_SHOPPER} events a shopper, {EVENTS_PER_ITEM} an item, "
                                             "40 items a category, 5 categories a taste (unless --sizes gives the "
                                             "shoppers and items)",
                               "test_from": TEST_FROM, "train_args": args.train_arg, "points": []}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = args.work or Path(tmp)
        (work / "keys").mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "cloud_trainer.cli", "keygen", "--out", str(work / "keys"),
                        "--overwrite"], check=True, cwd=ROOT, capture_output=True)
        for size in sizes:
            results["points"].append(run_point(size, work, args.seed, args.stage_timeout, args.rss_limit_gb,
                                               args.train_arg))
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["curve"] = curve(results["points"])
    if not any(point["events_target"] == 100 * 10**6 for point in results["points"]):
        results["projection_100m"] = project(results["points"], 100 * 10**6)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
