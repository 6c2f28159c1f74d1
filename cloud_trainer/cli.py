"""``cloud-trainer`` command line: keygen, prepare, train, export, publish, rollout, rollback, fleet status."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cloud_trainer import __version__
from shared.topics import CHANNELS, DEFAULT_PREFIX, STABLE

if TYPE_CHECKING:
    from cloud_trainer.publisher import BrokerOptions

#: The factorized model's settings ``train`` takes (besides --rank and --history-length).
TUNED_SETTINGS = {
    "ease_l2": "EASE's ridge penalty (lambda)",
    "repeat_weight": "score added per occurrence of an item in the shopper's history",
    "trend_weight": "weight of the item bias log(1 + purchases in the last --trend-days days)",
    "trend_days": "the trend's window, in days",
    "view_weight": "a view's entry in the shopper-item matrix (a purchase's is 1)",
    "cart_weight": "a cart event's entry in the shopper-item matrix",
    "cold_start_scale": "scale of new items' vectors predicted from side features",
}


def _keygen(args: argparse.Namespace) -> int:
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


def _prepare(args: argparse.Namespace) -> int:
    from cloud_trainer.adapters import ADAPTERS

    prepared = ADAPTERS[args.dataset](args.input, args.out)
    print(f"{args.dataset}: {prepared.report.summary()}")
    print(f"wrote {prepared.events} events to {prepared.events_path}")
    if prepared.items_path:
        print(f"wrote {prepared.items} items to {prepared.items_path}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from cloud_trainer.train import TrainConfig, train

    config = TrainConfig(
        events=str(args.events), items=str(args.items) if args.items else None, model=args.model, dim=args.dim,
        rank=args.rank, history_length=args.history_length, epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, test_from=args.test_from,
        distribute=args.distribute, cpu_devices=args.cpu_devices, cold_start=args.cold_start,
        tune=args.tune, target=args.target,
        **{name: getattr(args, name) for name in (*TUNED_SETTINGS, "tune_budget", "validation_share")
           if getattr(args, name) is not None},
    )
    if args.test_from:
        from cloud_trainer.evaluation import cut_time

        cut_time(args.test_from)  # a bad date is an error now, not after reading the data
    metrics = train(config, args.out)
    shown = ("users", "items", "new_items", "examples", "loss", "replicas", "train_seconds")
    print(json.dumps({k: metrics[k] for k in shown}))
    print(f"run directory: {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cloud_trainer.evaluate_run import evaluate_run

    report = evaluate_run(args.run, args.events, args.test_from, args.target)
    table = report.text()
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


def _export(args: argparse.Namespace) -> int:
    from cloud_trainer.bundler import BundleOptions, build_bundle

    options = BundleOptions(variant=args.variant, fleet=args.fleet, version=args.version,
                            valid_days=args.valid_days, force=args.force,
                            explanations=not args.no_explanations, channels=tuple(args.channel))
    out = args.out or args.run / "bundle"
    manifest = build_bundle(args.run, args.key, out, options)
    size = manifest.files["model.tflite"].length
    print(f"bundle version {manifest.version} for fleet {manifest.fleet}: {out} "
          f"(model {size} bytes, {manifest.model.num_items} items, expires {manifest.expires}, "
          f"released to {', '.join(manifest.channels) or 'no channel yet'})")
    return 0


def _broker_options(args: argparse.Namespace) -> BrokerOptions:
    from cloud_trainer.publisher import BrokerOptions

    return BrokerOptions(args.broker, prefix=args.topic_prefix, client_id=args.client_id,
                         tls_files=(args.ca_file, args.cert_file, args.key_file))


def _publish(args: argparse.Namespace) -> int:
    from cloud_trainer.publisher import publish_bundle

    report = publish_bundle(args.bundle, _broker_options(args), args.channel, args.key)
    replaced = f", replaced version {report.replaced_version}" if report.replaced_version else ""
    print(f"published version {report.version} on {report.channel}: {report.chunks} chunks, {report.bytes} bytes "
          f"in {report.seconds}s{replaced}")
    return 0


def _rollout(args: argparse.Namespace) -> int:
    from cloud_trainer.fleet import roll_out
    from cloud_trainer.publisher import BrokerConnection
    from cloud_trainer.rollout import Decision, RolloutPolicy

    policy = RolloutPolicy(max_failure_rate=args.max_failure_rate, max_server_error_rate=args.max_error_rate,
                           soak_s=args.soak, timeout_s=args.timeout)
    canaries = [c.strip() for c in args.canary.split(",") if c.strip()]
    with BrokerConnection(_broker_options(args)) as connection:
        result = roll_out(connection, args.bundle, canaries, policy, args.key,
                          progress=lambda line: print(line, flush=True))
    if result.decision is Decision.ABORT:
        print(f"rollout of version {result.version} aborted: {result.why}", file=sys.stderr)
        return 1
    if result.stable_on_version < result.stable_total:
        print(f"version {result.version} promoted, but {result.why}", file=sys.stderr)
        return 4
    print(f"version {result.version} is on every channel: {result.stable_on_version} stable agents updated")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from cloud_trainer.fleet import roll_back
    from cloud_trainer.publisher import BrokerConnection

    with BrokerConnection(_broker_options(args)) as connection:
        roll_back(connection, args.bundle, args.key, progress=lambda line: print(line, flush=True))
    return 0


def _fleet_status(args: argparse.Namespace) -> int:
    from cloud_trainer.fleet import FleetWatcher, status_table
    from cloud_trainer.publisher import BrokerConnection

    with BrokerConnection(_broker_options(args)) as connection:
        watcher = FleetWatcher(connection, args.fleet)
        time.sleep(args.wait)  # retained statuses arrive at once; live ones as agents publish
        statuses = watcher.statuses()
    if args.json:
        print(json.dumps(statuses, indent=1, sort_keys=True))
    elif not statuses:
        print(f"no agent of fleet {args.fleet} has reported a status")
    else:
        print(status_table(statuses, time.time()))
    return 0


def _add_broker_args(p: argparse.ArgumentParser, client_id: str = "cloud-trainer") -> None:
    p.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--topic-prefix", default=DEFAULT_PREFIX)
    p.add_argument("--client-id", default=client_id, help="MQTT client id (the certificate's name under TLS)")
    p.add_argument("--ca-file", default="", help="CA certificate (PEM) for mqtts")
    p.add_argument("--cert-file", default="", help="client certificate (PEM) for mqtts")
    p.add_argument("--key-file", default="", help="client private key (PEM) for mqtts")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloud-trainer", description="Edge Recommender cloud trainer.")
    parser.add_argument("--version", action="version", version=f"cloud-trainer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="make the Ed25519 key pair that signs model bundles")
    p.add_argument("--out", type=Path, required=True, help="folder for signing.key and signing.pub")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=_keygen)

    p = sub.add_parser("prepare", help="convert a dataset to the events/items interchange tables")
    p.add_argument("dataset", choices=("online-retail", "retailrocket"))
    p.add_argument("--input", type=Path, required=True, help="the dataset's CSV (optionally .gz)")
    p.add_argument("--out", type=Path, required=True, help="folder for events.csv.gz and items.csv")
    p.set_defaults(handler=_prepare)

    p = sub.add_parser("train", help="train the model on an events table")
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--items", type=Path, help="items table (item_id,title,category,price): titles in the catalogue; "
                   "items without events join the model through their side features")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--model", choices=["factorized", "two-tower"], default="factorized",
                   help="factorized: low-rank item-item model fitted in closed form, with trend and repeat terms "
                        "(default); two-tower: Keras embeddings trained with a full softmax")
    p.add_argument("--rank", type=int, default=256, help="factorized: embedding size (a starting point when tuning)")
    p.add_argument("--dim", type=int, default=32, help="two-tower: embedding size")
    p.add_argument("--history-length", type=int, help="events the model sees (default: 200 factorized, 50 two-tower)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--test-from", help="YYYY-MM-DD (UTC): train only on earlier events; evaluate on the rest")
    p.add_argument("--distribute", choices=["none", "mirrored"], default="none",
                   help="two-tower: train under tf.distribute.MirroredStrategy (every GPU, else the logical CPUs)")
    p.add_argument("--cpu-devices", type=int, default=1,
                   help="split the CPU into this many logical devices (a strategy without GPUs, or to test one)")
    p.add_argument("--no-cold-start", dest="cold_start", action="store_false",
                   help="leave items of --items that have no events out of the model (default: their vectors are "
                        "predicted from title words, category and price bucket)")
    tuning = p.add_argument_group(
        "factorized model settings", "chosen on a validation window of the training events (the most recent "
        "--validation-share of them) within --tune-budget seconds; the values given are where the search starts, "
        "or, with --no-tune, the settings used")
    tuning.add_argument("--no-tune", dest="tune", action="store_false", help="use the settings as given")
    tuning.add_argument("--target", choices=("purchase", "any"), default="purchase",
                        help="what counts as a hit when choosing: a purchase, or for logs with few purchases any "
                             "event (evaluate then uses the same)")
    tuning.add_argument("--tune-budget", type=float, metavar="SECONDS", help="default 180")
    tuning.add_argument("--validation-share", type=float, help="default 0.1")
    for name, help_text in TUNED_SETTINGS.items():
        tuning.add_argument(f"--{name.replace('_', '-')}", type=float, help=help_text)
    p.set_defaults(handler=_train)

    p = sub.add_parser("evaluate", help="Recall/NDCG/coverage of a run and of the baselines on the held-out period")
    p.add_argument("--events", type=Path, required=True, help="the same events table the run was trained from")
    p.add_argument("--run", type=Path, help="run directory (trained with --test-from); baselines only without")
    p.add_argument("--test-from", help="YYYY-MM-DD; default: the run's")
    p.add_argument("--target", choices=("purchase", "any"),
                   help="what counts as a hit: a purchase, or any event; default: the run's (purchase)")
    p.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("export", help="export a run to a signed TFLite bundle")
    p.add_argument("--run", type=Path, required=True, help="run directory from train")
    p.add_argument("--key", type=Path, required=True, help="signing.key from keygen")
    p.add_argument("--out", type=Path, help="bundle folder (default: RUN/bundle, beside the run's model and metrics)")
    p.add_argument("--variant", choices=("int8", "float16", "float32"), default="int8")
    p.add_argument("--fleet", default="default")
    p.add_argument("--version", type=int, help="bundle version (default: current Unix time)")
    p.add_argument("--valid-days", type=int, default=90, help="manifest expiry, in days")
    p.add_argument("--channel", action="append", choices=CHANNELS, default=[],
                   help="sign the bundle as released to this channel (repeatable); default none: "
                        "'publish --key' or 'rollout' signs the release to each channel")
    p.add_argument("--force", action="store_true",
                   help="bundle even if the parity check or the quantization quality gate fails")
    p.add_argument("--no-explanations", action="store_true",
                   help="leave per-item explanations out of the graph (int8: ~30%% smaller for large catalogues)")
    p.set_defaults(handler=_export)

    p = sub.add_parser("publish", help="publish a bundle to one channel of the fleet over MQTT")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--channel", choices=CHANNELS, default=STABLE)
    p.add_argument("--key", type=Path, help="signing.key: sign the version as released to --channel (without it, "
                                            "the bundle must already be signed for that channel)")
    _add_broker_args(p)
    p.set_defaults(handler=_publish)

    p = sub.add_parser("rollout", help="canary first, then stable when the canaries are healthy; abort and "
                                       "roll the canaries back otherwise")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--canary", required=True, help="comma-separated device ids that must report healthy")
    p.add_argument("--key", type=Path, required=True,
                   help="signing.key: signs the release to each channel, and on abort the rollback instruction")
    p.add_argument("--soak", type=float, default=30.0, help="seconds every canary must stay healthy")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each phase")
    p.add_argument("--max-failure-rate", type=float, default=0.0, help="share of canaries allowed to fail")
    p.add_argument("--max-error-rate", type=float, default=0.01, help="5xx answers per request allowed")
    _add_broker_args(p)
    p.set_defaults(handler=_rollout)

    p = sub.add_parser("rollback", help="re-deliver an earlier bundle to every channel as a new signed version")
    p.add_argument("--bundle", type=Path, required=True, help="the earlier bundle to go back to")
    p.add_argument("--key", type=Path, required=True, help="signing.key")
    _add_broker_args(p)
    p.set_defaults(handler=_rollback)

    p = sub.add_parser("fleet", help="fleet operations")
    fleet = p.add_subparsers(dest="fleet_command", required=True)
    p = fleet.add_parser("status", help="every agent: state, channel, version, last update, health")
    p.add_argument("--fleet", default="default")
    p.add_argument("--wait", type=float, default=1.0, help="seconds to collect statuses")
    p.add_argument("--json", action="store_true")
    _add_broker_args(p, client_id="cloud-trainer-status")
    p.set_defaults(handler=_fleet_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cloud_trainer.events_io import InputError
    from cloud_trainer.publisher import PublishError
    from shared.bundle import BundleError
    from shared.signing import SignatureError

    try:
        return int(args.handler(args))
    except (InputError, PublishError, BundleError, SignatureError, OSError, ValueError) as e:
        print(f"cloud-trainer {args.command}: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # ParityError and other refusals with a message for the user
        print(f"cloud-trainer {args.command}: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
