"""``cloud-trainer`` command line: keygen, prepare, train, export, publish, rollout, rollback, fleet status
(and enroll, revoke), erasure-secret, erase, rules publish, keys rotate, console.

The parser; what each subcommand does is in :mod:`cloud_trainer.commands`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from cloud_trainer import __version__, commands, enrolment_commands, fleet_commands, key_commands
from cloud_trainer.commands import ASSORTMENT_HISTORY, TUNED_SETTINGS
from cloud_trainer.console import command as console_command
from cloud_trainer.delivery.origin import CHUNK_SIZE_PRESETS
from shared.manifest import CHUNK_SIZE
from shared.topics import CHANNELS, DEFAULT_PREFIX, STABLE


def _add_broker_args(p: argparse.ArgumentParser, client_id: str = "cloud-trainer") -> None:
    p.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--topic-prefix", default=DEFAULT_PREFIX)
    p.add_argument("--client-id", default=client_id, help="MQTT client id (the certificate's name under TLS)")
    p.add_argument("--ca-file", default="", help="CA certificate (PEM) for mqtts")
    p.add_argument("--cert-file", default="", help="client certificate (PEM) for mqtts")
    p.add_argument("--key-file", default="", help="client private key (PEM) for mqtts")


def _chunk_size(text: str) -> int:
    """``--chunk-size``: bytes, from 1 KiB to what agents accept."""
    if not text.isdigit() or not 1024 <= int(text) <= CHUNK_SIZE:
        raise argparse.ArgumentTypeError(f"must be a number of bytes from 1024 to {CHUNK_SIZE}, got {text!r}")
    return int(text)


def _add_origin_args(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("delivery", "payload over HTTP(S) from an origin, control over MQTT "
                                 "(docs/operations.md); chunk size for the broker")
    group.add_argument("--origin-url", metavar="BASE", help="each file's URL BASE/<fleet>/<version>/<file> goes into "
                       "the signed manifest: agents fetch it with Range requests, MQTT chunks stay the fallback")
    if p.prog.endswith("export"):
        group.add_argument("--chunk-size", type=_chunk_size, metavar="BYTES",
                           help=f"bytes per MQTT chunk and per chunk hash (default {CHUNK_SIZE}, or the preset's)")
        group.add_argument("--broker-preset", choices=tuple(CHUNK_SIZE_PRESETS), default="mosquitto",
                           help="chunk size that fits the broker: mosquitto (also EMQX, VerneMQ, HiveMQ; 256 KiB) or "
                                "aws-iot (120 KiB: AWS IoT Core takes 128 KB payloads; give agents "
                                "mqtt.subscribe_batch = 8)")
    else:
        group.add_argument("--origin", type=Path, metavar="DIR", help="write the bundle's files to "
                           "DIR/<fleet>/<version>/<file> (immutable) before publishing; serve DIR at --origin-url "
                           "(which needs --key unless the bundle was exported with it)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloud-trainer", description="Edge Recommender cloud trainer.")
    parser.add_argument("--version", action="version", version=f"cloud-trainer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("keygen", help="make the Ed25519 key pair that signs model bundles")
    p.add_argument("--out", type=Path, required=True, help="folder for signing.key and signing.pub")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=commands.run_keygen)

    p = sub.add_parser("prepare", help="convert a dataset to the events/items interchange tables")
    p.add_argument("dataset", choices=("online-retail", "retailrocket"))
    p.add_argument("--input", type=Path, required=True, help="the dataset's CSV (optionally .gz)")
    p.add_argument("--out", type=Path, required=True, help="folder for events.csv.gz and items.csv")
    p.set_defaults(handler=commands.run_prepare)

    p = sub.add_parser("train", help="train the model on an events table, the fleet's aggregates, or both")
    p.add_argument("--events", type=Path, help="events table (required unless --fleet-aggregates)")
    p.add_argument("--fleet-aggregates", type=Path, metavar="DIR",
                   help="folder of fleet aggregates ('fleet aggregates' collects them): train on their summed item "
                        "Gram matrix, alone (settings as given or --settings-from) or with --events (tuned on the "
                        "events, trained on both); see cloud_trainer/fleet_training.py")
    p.add_argument("--settings-from", type=Path, metavar="RUN",
                   help="start from (without events: use) the factorized settings of this earlier run")
    p.add_argument("--items", type=Path, help="items table (item_id,title,category,price): titles in the catalogue; "
                   "items without events join the model through their side features")
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--model", choices=["factorized", "two-tower", "transformer", "blend"], default="factorized",
                   help="factorized: low-rank item-item model fitted in closed form, with trend and repeat terms "
                        "(default); two-tower: Keras embeddings trained by gradient descent (see --softmax); "
                        "transformer: causal self-attention over the last events, their kinds and time gaps "
                        "(early stopping on --validation-share; needs agents of contract version 3); "
                        "blend: the factorized model and the transformer in one graph, the transformer's weight "
                        "chosen on the validation window (contract version 3)")
    p.add_argument("--rank", type=int, default=256, help="factorized: embedding size (a starting point when tuning)")
    p.add_argument("--dim", type=int, default=32, help="two-tower and transformer (also a blend's): embedding size")
    p.add_argument("--history-length", type=int,
                   help="events the model sees (default: 200 factorized, 50 two-tower and transformer; "
                        "blend: the factorized model's, its transformer reads 50)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--test-from", help="YYYY-MM-DD (UTC): train only on earlier events; evaluate on the rest")
    p.add_argument("--softmax", choices=["in-batch", "full"], default="in-batch",
                   help="two-tower: the loss; in-batch: the batch's target items are the candidates, with a log-Q "
                        "correction (any catalogue size; default); full: every item, exact (small catalogues)")
    p.add_argument("--distribute", choices=["none", "mirrored", "multi-worker"], default="none",
                   help="two-tower and transformer: mirrored: tf.distribute.MirroredStrategy on this machine "
                        "(every GPU, else the logical CPUs); multi-worker: "
                        "tf.distribute.MultiWorkerMirroredStrategy across the hosts of the TF_CONFIG environment "
                        "variable (docs/scale.md)")
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
    p.set_defaults(handler=commands.run_train)

    p = sub.add_parser("evaluate", help="Recall/NDCG/coverage of a run and of the baselines on the held-out period")
    p.add_argument("--events", type=Path, required=True, help="the same events table the run was trained from")
    p.add_argument("--run", type=Path, help="run directory (trained with --test-from); baselines only without")
    p.add_argument("--test-from", help="YYYY-MM-DD; default: the run's")
    p.add_argument("--target", choices=("purchase", "any"),
                   help="what counts as a hit: a purchase, or any event; default: the run's (purchase)")
    p.add_argument("--variant", choices=("auto", "int8", "float16", "float32"), default="auto",
                   help="the export scored as served; auto (default) chooses as 'export' does")
    p.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    p.set_defaults(handler=commands.run_evaluate)

    p = sub.add_parser("export", help="export a run to a signed TFLite bundle")
    p.add_argument("--run", type=Path, required=True, help="run directory from train")
    p.add_argument("--key", type=Path, required=True, help="signing.key from keygen")
    p.add_argument("--out", type=Path, help="bundle folder (default: RUN/bundle, beside the run's model and metrics)")
    p.add_argument("--variant", choices=("auto", "int8", "float16", "float32"), default="auto",
                   help="auto (default): int8, or float16 when int8 fails the parity check or the quality gate "
                        "(large catalogues)")
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
    store = p.add_argument_group(
        "per-store bundles", "a chain trains one model; each store's bundle ranks the items it sells and goes "
        "to that store's devices only (see docs/operations.md)")
    store.add_argument("--assortment", type=Path, metavar="FILE",
                       help="item ids the store sells: one per line, or a CSV with an item_id column; the bundle "
                            "ranks only these (ids the run does not know are left out with a warning; none known "
                            "is an error)")
    store.add_argument("--assortment-history", choices=ASSORTMENT_HISTORY, default="chain",
                       help="chain (default): every item of the run still counts in a shopper's history, sold here "
                            "or not; store: only the assortment's items (a smaller bundle for large catalogues)")
    store.add_argument("--target", action="append", default=[], metavar="DEVICE_ID",
                       help="only this device installs the bundle (repeatable); publish sends it to each target's "
                            "own manifest topic, so bundles for different stores do not replace each other")
    _add_origin_args(p)
    p.set_defaults(handler=commands.run_export)

    p = sub.add_parser("publish", help="publish a bundle to one channel of the fleet over MQTT (a bundle exported "
                                       "with --target: to each target device's own topic of the channel)")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--channel", choices=CHANNELS, default=STABLE)
    p.add_argument("--key", type=Path, help="signing.key: sign the version as released to --channel (without it, "
                                            "the bundle must already be signed for that channel)")
    _add_origin_args(p)
    _add_broker_args(p)
    p.set_defaults(handler=commands.run_publish)

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
    judged = p.add_argument_group(
        "judged by outcome", "also require the version to convert shoppers (requests with a carted or bought "
        "recommended item, from the agents' outcome counts) at least (1 - margin) times as often as a reference, "
        "by an always-valid sequential test checked at every look; abort when it converts less. How long a "
        "decision takes depends on traffic: allow for it in --timeout (docs/operations.md)")
    judged.add_argument("--judge-outcome", choices=("holdout", "stable"),
                        help="holdout: the new version's model arm against its holdout arm (popular items) on the "
                             "canaries; stable: its model arm on the canaries against the stable version's on the "
                             "stable devices, counted from the rollout's start. Default: health only")
    judged.add_argument("--alpha", type=float, default=0.05,
                        help="chance that the outcome decision is wrong, over the whole rollout (default 0.05)")
    judged.add_argument("--margin", type=float, default=0.1,
                        help="share of the reference's conversion rate the version may lose and still be promoted "
                             "(default 0.1)")
    judged.add_argument("--min-requests", type=int, default=1000,
                        help="requests each side needs before any outcome decision (default 1000)")
    _add_broker_args(p)
    p.set_defaults(handler=commands.run_rollout)

    p = sub.add_parser("rollback", help="re-deliver an earlier bundle to every channel as a new signed version")
    p.add_argument("--bundle", type=Path, required=True, help="the earlier bundle to go back to")
    p.add_argument("--key", type=Path, required=True, help="signing.key")
    _add_broker_args(p)
    p.set_defaults(handler=commands.run_rollback)

    p = sub.add_parser("fleet", help="fleet operations")
    fleet = p.add_subparsers(dest="fleet_command", required=True)
    p = fleet.add_parser("status", help="every agent: state, channel, version, last update, health; and the "
                                        "outcomes per model version and arm, summed over the fleet")
    p.add_argument("--fleet", default="default")
    p.add_argument("--wait", type=float, default=1.0, help="seconds to collect statuses")
    p.add_argument("--json", action="store_true")
    _add_broker_args(p, client_id="cloud-trainer-status")
    p.set_defaults(handler=commands.run_fleet_status)
    p = fleet.add_parser("aggregates", help="collect the agents' fleet aggregates (thresholded item and item-pair "
                                            "counts, no shopper ids) into a folder for train --fleet-aggregates")
    p.add_argument("--fleet", default="default")
    p.add_argument("--out", type=Path, required=True, help="folder: one <device>.json per agent")
    p.add_argument("--wait", type=float, default=2.0, help="seconds to collect the retained aggregates")
    _add_broker_args(p, client_id="cloud-trainer-aggregates")
    p.set_defaults(handler=commands.run_fleet_aggregates)
    enrolment_commands.add_parsers(fleet)  # enroll, revoke
    fleet_commands.add_parsers(sub, _add_broker_args)  # erasure-secret, erase, rules publish
    console_command.add_parser(sub, _add_broker_args)  # the web console
    key_commands.add_parsers(sub, _add_broker_args)  # keys rotate
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cloud_trainer.errors import BadInput, GateRefusal, TransportError
    from shared.bundle import BundleError

    try:
        return int(args.handler(args))
    except (BadInput, TransportError, BundleError, OSError, ValueError) as e:
        print(f"cloud-trainer {args.command}: {e}", file=sys.stderr)
        return 2
    except (GateRefusal, RuntimeError) as e:  # a gate's refusal, and others with a message for the user
        print(f"cloud-trainer {args.command}: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
