"""``cloud-trainer`` subcommands for signed fleet documents besides models: ``erasure-secret``,
``erase`` (fleet-wide erasure, :mod:`cloud_trainer.delivery.erasure`) and ``rules publish``
(business rules, :mod:`cloud_trainer.delivery.rules`). Each returns the exit status."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from cloud_trainer.commands import _broker_options


def run_erasure_secret(args: argparse.Namespace) -> int:
    from shared.erasure import SECRET_BYTES

    out: Path = args.out
    if out.exists() and not args.overwrite:
        print(f"cloud-trainer: {out} exists; pass --overwrite to replace it (agents holding the old secret "
              "would no longer match requests)", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(SECRET_BYTES) + "\n")
    print(f"erasure secret: {out} (0600; give it to every agent of the fleet: erasure.secret_file)")
    return 0


def run_erase(args: argparse.Namespace) -> int:
    from cloud_trainer.delivery.erasure import erase_user

    report = erase_user(_broker_options(args), args.fleet, args.user, args.secret, args.key, args.valid_days)
    dropped = f", {report.dropped} expired requests dropped" if report.dropped else ""
    print(f"erasure request {report.version} published to fleet {args.fleet}: the list holds {report.entries} "
          f"requests ({report.bytes} bytes){dropped}; agents acknowledge with erasure.version >= {report.version} "
          "in their status ('fleet status --json')")
    return 0


def run_rules_publish(args: argparse.Namespace) -> int:
    from cloud_trainer.delivery.rules import publish_rules

    report = publish_rules(_broker_options(args), args.file, args.key, fleet=args.fleet, version=args.version,
                           valid_days=args.valid_days, targets=tuple(args.target))
    where = f" for {', '.join(report.targets)}" if report.targets else ""
    print(f"rules version {report.version} published to fleet {args.fleet}{where}: {report.counts}, "
          f"expires {report.expires}")
    return 0


def add_parsers(sub: argparse._SubParsersAction, add_broker_args) -> None:  # type: ignore[type-arg,no-untyped-def]
    """Register the subcommands on ``sub`` (``add_broker_args``: the CLI's broker options)."""
    p = sub.add_parser("erasure-secret", help="make the fleet's erasure secret (agents' erasure.secret_file)")
    p.add_argument("--out", type=Path, required=True, help="file to write (0600)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(handler=run_erasure_secret)

    p = sub.add_parser("erase", help="erase a shopper on every agent of the fleet (a signed, retained request that "
                                     "names them by a keyed digest, never by id)")
    p.add_argument("--user", required=True, help="the shopper's id")
    p.add_argument("--key", type=Path, required=True, help="signing.key (the key agents pin)")
    p.add_argument("--secret", type=Path, required=True, help="the fleet's erasure secret (erasure-secret)")
    p.add_argument("--fleet", default="default")
    p.add_argument("--valid-days", type=int, default=365,
                   help="how long the request stays on the broker for agents that are offline (default 365: the "
                        "agents' default history.max_age_days)")
    add_broker_args(p, client_id="cloud-trainer")
    p.set_defaults(handler=run_erase)

    p = sub.add_parser("rules", help="business rules (block, boost, pin) signed for the fleet")
    rules = p.add_subparsers(dest="rules_command", required=True)
    p = rules.add_parser("publish", help="validate, sign and publish a rules file (docs/operations.md)")
    p.add_argument("--file", type=Path, required=True, help='rules.json: {"rules": [...]}')
    p.add_argument("--key", type=Path, required=True, help="signing.key")
    p.add_argument("--fleet", default="default")
    p.add_argument("--version", type=int, help="rules version (default: current Unix time; must grow)")
    p.add_argument("--valid-days", type=int, default=30, help="the document's expiry, in days")
    p.add_argument("--target", action="append", default=[], metavar="DEVICE_ID",
                   help="only this device applies the rules (repeatable): published to its own rules topic")
    add_broker_args(p, client_id="cloud-trainer")
    p.set_defaults(handler=run_rules_publish)
