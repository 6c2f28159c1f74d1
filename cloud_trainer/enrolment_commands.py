"""``cloud-trainer fleet enroll`` and ``fleet revoke``: a device's enrolment file, and its revocation
(:mod:`cloud_trainer.delivery.enrolment`). Each returns the exit status."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.topics import CHANNELS, DEFAULT_PREFIX, STABLE


def run_enroll(args: argparse.Namespace) -> int:
    from cloud_trainer.delivery.enrolment import enroll

    done = enroll(args.device, args.pki, args.broker, args.out, signing_public_key=args.signing_pub,
                  fleet=args.fleet, channel=args.channel, profile=args.profile, topic_prefix=args.topic_prefix,
                  days=args.days, overwrite=args.overwrite)
    acl = (f"; {args.pki / 'acl'} has its rules now: reload the broker (kill -HUP <mosquitto pid>)"
           if done.acl_changed else "")
    print(f"enrolment of {done.device_id} (fleet {done.fleet}): {done.out} (0600: it holds the device's private "
          f"key; copy it to the device over a trusted channel, run 'edge-agent enroll' there, then delete it){acl}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from cloud_trainer.delivery.enrolment import revoke

    listed = revoke(args.device, args.pki)
    print(f"revoked {args.device}: {args.pki / 'crl.pem'} lists {listed} certificates and its ACL rules are gone; "
          "reload the broker (kill -HUP <mosquitto pid>) to refuse its new connections, or restart it to also "
          "drop a connection it holds now")
    return 0


def add_parsers(fleet: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``enroll`` and ``revoke`` on the ``fleet`` subcommands."""
    p = fleet.add_parser("enroll", help="issue a device's certificate and write its enrolment file (secret)")
    p.add_argument("device", help="the device id (its certificate's name and MQTT username)")
    p.add_argument("--pki", type=Path, required=True, help="the fleet PKI folder (fleet_pki.py --out)")
    p.add_argument("--broker", required=True, help="mqtts://host:8883, as the device reaches the broker")
    p.add_argument("--signing-pub", type=Path, required=True, help="signing.pub from keygen (the key agents pin)")
    p.add_argument("--out", type=Path, required=True, help="the enrolment file to write (0600)")
    p.add_argument("--fleet", help="default: the fleet the PKI's CA was made for")
    p.add_argument("--channel", choices=CHANNELS, default=STABLE)
    p.add_argument("--profile", type=Path, help="base profile (e.g. firmware_configs/rpi4.toml) for the other settings")
    p.add_argument("--topic-prefix", default=DEFAULT_PREFIX)
    p.add_argument("--days", type=int, default=825, help="certificate validity")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(handler=run_enroll)
    p = fleet.add_parser("revoke", help="revoke a device's certificate (the broker's CRL) and drop its ACL rules")
    p.add_argument("device")
    p.add_argument("--pki", type=Path, required=True, help="the fleet PKI folder (fleet_pki.py --out)")
    p.set_defaults(handler=run_revoke)
