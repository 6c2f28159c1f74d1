"""What each ``cloud-trainer`` subcommand does, given its parsed arguments (the parser is
:mod:`cloud_trainer.cli`); each returns the exit status. Heavy imports (TensorFlow among them)
happen inside the command that needs them."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_trainer.progress import activity

if TYPE_CHECKING:
    from cloud_trainer.delivery.broker import BrokerOptions

#: The factorized model's settings ``train`` takes (besides --rank and --history-length).
TUNED_SETTINGS = {
    "ease_l2": "EASE's ridge penalty (lambda)",
    "repeat_weight": "score added per occurrence of an item in the shopper's history",
    "trend_weight": "weight of the item bias log(1 + purchases in the last --trend-days days)",
    "trend_days": "the trend's window, in days",
    "recency": "weight decay per event back in the history (1: the history's events count alike)",
    "view_weight": "a view's entry in the shopper-item matrix (a purchase's is 1)",
    "cart_weight": "a cart event's entry in the shopper-item matrix",
    "cold_start_scale": "scale of new items' vectors predicted from side features",
}
#: ``export --assortment-history``: what a store's bundle reads in histories
#: (cloud_trainer.delivery.assortment.HISTORY_SCOPES, kept here so the parser imports no numpy).
ASSORTMENT_HISTORY = ("chain", "store")


def run_keygen(args: argparse.Namespace) -> int:
    from shared.signing import generate_private_key, key_id, private_key_pem, public_key_pem

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / "signing.key", out / "signing.pub"
    if private_path.exists() and not args.overwrite:
        print(f"cloud-trainer: {private_path} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    key = generate_private_key()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_key_pem(key))
    public_path.write_bytes(public_key_pem(key.public_key()))
    print(f"private key: {private_path} (keep it secret; 0600)")
    print(f"public key:  {public_path} (give it to agents: model.trusted_public_key)")
    print(f"key id:      {key_id(key.public_key())}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from cloud_trainer.data.converters import CONVERTERS

    with activity(f"prepare {args.dataset}"):
        prepared = CONVERTERS[args.dataset](args.input, args.out)
    print(f"{args.dataset}: {prepared.report.summary()}")
    print(f"wrote {prepared.events} events to {prepared.events_path}")
    if prepared.items_path:
        print(f"wrote {prepared.items} items to {prepared.items_path}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from cloud_trainer.train import TrainConfig, train

    if args.settings_from:  # a previous run's settings, where none is given on the command line
        from cloud_trainer.fleet_training import settings_from

        for name, value in settings_from(args.settings_from).items():
            if getattr(args, name, None) is None or name == "rank":
                setattr(args, name, value)
        args.tune = args.tune and bool(args.events)
    config = TrainConfig(
        events=str(args.events) if args.events else "", items=str(args.items) if args.items else None,
        model=args.model, dim=args.dim,
        rank=args.rank, history_length=args.history_length, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, test_from=args.test_from, softmax=args.softmax,
        distribute=args.distribute, cpu_devices=args.cpu_devices, cold_start=args.cold_start,
        tune=args.tune, target=args.target,
        fleet_aggregates=str(args.fleet_aggregates) if args.fleet_aggregates else None,
        settings_from=str(args.settings_from) if args.settings_from else None,
        **{name: getattr(args, name) for name in (*TUNED_SETTINGS, "tune_budget", "validation_share")
           if getattr(args, name) is not None},
    )
    if args.test_from:
        from cloud_trainer.evaluation.splits import cut_time

        cut_time(args.test_from)  # a bad date is an error now, not after reading the data
    with activity(f"train {args.model}"):
        metrics = train(config, args.out)
    shown = ("users", "items", "new_items", "examples", "calibration_histories", "loss", "replicas", "workers",
             "train_seconds")
    print(json.dumps({k: metrics[k] for k in shown if k in metrics}))
    print(f"run directory: {args.out}" if metrics["chief"] else "trained; the chief writes the run directory")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from cloud_trainer.evaluation.evaluate_run import evaluate_run

    report = evaluate_run(args.run, args.events, args.test_from, args.target, args.variant)
    table = report.text()
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from cloud_trainer.delivery.bundler import BundleOptions, build_bundle
    from cloud_trainer.delivery.origin import CHUNK_SIZE_PRESETS

    options = BundleOptions(variant=args.variant, fleet=args.fleet, version=args.version,
                            valid_days=args.valid_days, force=args.force,
                            explanations=not args.no_explanations, channels=tuple(args.channel),
                            assortment=args.assortment, assortment_history=args.assortment_history,
                            targets=tuple(args.target), origin_url=args.origin_url,
                            chunk_size=args.chunk_size or CHUNK_SIZE_PRESETS[args.broker_preset])
    out = args.out or args.run / "bundle"
    with activity("export"):
        manifest = build_bundle(args.run, args.key, out, options)
    size = manifest.files["model.tflite"].length
    history_only = (f" (+{manifest.model.history_only_items} read in histories only)"
                    if manifest.model.history_only_items else "")
    targets = f", for {', '.join(manifest.targets)} only" if manifest.targets else ""
    print(f"bundle version {manifest.version} for fleet {manifest.fleet}: {out} "
          f"(model {size} bytes, {manifest.model.num_items} items{history_only}, expires {manifest.expires}, "
          f"released to {', '.join(manifest.channels) or 'no channel yet'}{targets})")
    return 0


def _broker_options(args: argparse.Namespace) -> BrokerOptions:
    from cloud_trainer.delivery.broker import BrokerOptions

    return BrokerOptions(args.broker, prefix=args.topic_prefix, client_id=args.client_id,
                         tls_files=(args.ca_file, args.cert_file, args.key_file))


def run_publish(args: argparse.Namespace) -> int:
    from cloud_trainer.delivery.publisher import publish_bundle

    with activity("publish", total=1, unit="chunks") as bar:
        report = publish_bundle(args.bundle, _broker_options(args), args.channel, args.key, on_chunk=bar.update,
                                origin_dir=args.origin, origin_url=args.origin_url)
    replaced = f", replaced version {report.replaced_version}" if report.replaced_version else ""
    where = f" for {', '.join(report.targets)}" if report.targets else ""
    print(f"published version {report.version} on {report.channel}{where}: {report.chunks} chunks, "
          f"{report.bytes} bytes in {report.seconds}s{replaced}")
    return 0


def run_rollout(args: argparse.Namespace) -> int:
    from cloud_trainer.delivery.broker import BrokerConnection
    from cloud_trainer.delivery.outcome_judge import Comparison, OutcomePolicy
    from cloud_trainer.delivery.rollout import Decision, RolloutPolicy, roll_out

    policy = RolloutPolicy(max_failure_rate=args.max_failure_rate, max_server_error_rate=args.max_error_rate,
                           soak_s=args.soak, timeout_s=args.timeout)
    outcome = None if args.judge_outcome is None else OutcomePolicy(
        Comparison(args.judge_outcome), alpha=args.alpha, margin=args.margin, min_requests=args.min_requests)
    canaries = [c.strip() for c in args.canary.split(",") if c.strip()]
    with activity("rollout") as bar, BrokerConnection(_broker_options(args)) as connection:
        def progress(line: str) -> None:
            print(line, flush=True)  # the lines stay as they are; the bar shows the latest
            bar.note(line)

        result = roll_out(connection, args.bundle, canaries, policy, args.key, progress=progress, outcome=outcome)
    if result.decision is Decision.ABORT:
        print(f"rollout of version {result.version} aborted: {result.why}", file=sys.stderr)
        return 1
    if result.stable_on_version < result.stable_total:
        print(f"version {result.version} promoted, but {result.why}", file=sys.stderr)
        return 4
    print(f"version {result.version} is on every channel: {result.stable_on_version} stable agents updated")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    from cloud_trainer.delivery.broker import BrokerConnection
    from cloud_trainer.delivery.rollout import roll_back

    with BrokerConnection(_broker_options(args)) as connection:
        roll_back(connection, args.bundle, args.key, progress=lambda line: print(line, flush=True))
    return 0


def run_fleet_status(args: argparse.Namespace) -> int:
    from cloud_trainer.delivery.broker import BrokerConnection
    from cloud_trainer.delivery.fleet_status import FleetWatcher, status_table
    from cloud_trainer.delivery.outcome_table import outcome_rows, outcome_table

    with BrokerConnection(_broker_options(args)) as connection:
        watcher = FleetWatcher(connection, args.fleet)
        time.sleep(args.wait)  # retained statuses arrive at once; live ones as agents publish
        statuses = watcher.statuses()
    rows = outcome_rows(statuses)
    if args.json:
        print(json.dumps({"agents": statuses, "outcomes": rows}, indent=1, sort_keys=True))
    elif not statuses:
        print(f"no agent of fleet {args.fleet} has reported a status")
    else:
        print(status_table(statuses, time.time()))
        print("\noutcomes over the fleet, by model version and arm (conversion: requests with a carted or bought "
              "recommended item, 95% Wilson interval):")
        print(outcome_table(rows) if rows else "none reported yet")
    return 0



def run_fleet_aggregates(args: argparse.Namespace) -> int:
    from cloud_trainer.delivery.broker import BrokerConnection
    from cloud_trainer.delivery.fleet_aggregates import AggregateCollector, describe, write_aggregates
    from shared.fleet_aggregates import parse_aggregate

    with BrokerConnection(_broker_options(args)) as connection:
        collector = AggregateCollector(connection, args.fleet)
        time.sleep(args.wait)  # retained aggregates arrive at once
        payloads, rejected = collector.snapshot()
    for device, reason in sorted(rejected.items()):
        print(f"rejected the aggregate of {device}: {reason}", file=sys.stderr)
    if not payloads:
        print(f"no valid aggregate from fleet {args.fleet}", file=sys.stderr)
        return 1
    for path in write_aggregates(payloads, args.out):
        print(f"{describe(parse_aggregate(path.read_bytes()))} -> {path}")
    return 0
