"""``cloud-trainer keys rotate``: move the fleet to a new signing key (:mod:`cloud_trainer.delivery.keys`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cloud_trainer.commands import _broker_options


def run_keys_rotate(args: argparse.Namespace) -> int:
    from cloud_trainer.delivery.keys import rotate_keys

    report = rotate_keys(_broker_options(args), args.fleet, args.current, args.new, keep_current=args.keep_current,
                         revoke=tuple(args.revoke), valid_days=args.valid_days)
    revoked = f"; revoked: {', '.join(report.revoked)}" if report.revoked else ""
    if report.erasure_list_resigned:
        revoked += "; the erasure list is now signed by the new key"
    print(f"key rotation {report.version} published to fleet {args.fleet}: agents trust {', '.join(report.trusted)}"
          f"{revoked} ({report.chain} rotations, {report.bytes} bytes). Sign with {args.new} from now on; agents "
          f"acknowledge with keys.version >= {report.version} in their status")
    return 0


def add_parsers(sub: argparse._SubParsersAction, add_broker_args) -> None:  # type: ignore[type-arg,no-untyped-def]
    """Register ``keys`` on ``sub`` (``add_broker_args``: the CLI's broker options)."""
    p = sub.add_parser("keys", help="the fleet's signing keys")
    keys = p.add_subparsers(dest="keys_command", required=True)
    p = keys.add_parser("rotate", help="make agents trust a new signing key (a rotation signed by the current key "
                                       "and the new one, retained on <prefix>/<fleet>/keys; docs/security.md)")
    p.add_argument("--current", type=Path, required=True, help="the signing.key agents trust now")
    p.add_argument("--new", type=Path, required=True, help="the new signing.key ('keygen --out <folder>' makes one)")
    p.add_argument("--keep-current", action="store_true",
                   help="trust both keys for now (a later rotation drops the current one)")
    p.add_argument("--revoke", action="append", default=[], metavar="KEY_ID",
                   help="never trust this key again, nor anything it signed and agents have not installed "
                        "(repeatable; 'current': the --current key, when it leaked)")
    p.add_argument("--fleet", default="default")
    p.add_argument("--valid-days", type=int, default=365,
                   help="how long an agent that has not seen the rotation yet still accepts it (default 365)")
    add_broker_args(p, client_id="cloud-trainer")
    p.set_defaults(handler=run_keys_rotate)
