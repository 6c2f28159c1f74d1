"""``edge-agent`` command line: run the daemon, validate a profile, install an enrolment file or the service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_agent import __version__
from edge_agent.config import load
from edge_agent.errors import ConfigError
from edge_agent.service_install import PROFILES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="Edge Recommender agent.")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent until SIGTERM")
    run.add_argument("--config", required=True, type=Path, help="TOML profile (firmware_configs/*.toml)")
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                     help="override one setting (repeatable), e.g. --set api.port=8081")
    check = sub.add_parser("validate-config", help="check a profile and print the effective settings")
    check.add_argument("config", type=Path)
    check.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    rotate = sub.add_parser("rotate-key", help="rotate the device master key (the agent may keep running)")
    rotate.add_argument("--config", required=True, type=Path)
    rotate.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    enroll = sub.add_parser("enroll", help="install an enrolment file from 'cloud-trainer fleet enroll' (secret)")
    enroll.add_argument("file", type=Path)
    enroll.add_argument("--etc", type=Path, default=Path("/etc/edge-agent"), help="the configuration folder")
    enroll.add_argument("--force", action="store_true", help="replace an existing enrolment")
    enroll.add_argument("--owner", help="user (and group) to own the TLS files (run as root)")
    service = sub.add_parser(
        "install-service", help="write the packaged systemd unit and a device profile (run as root)",
        description="Write /etc/systemd/system/edge-agent.service, /etc/edge-agent/agent.toml and "
        "/etc/edge-agent/README.md from the files shipped in the package. Refuses to replace the unit "
        "or the profile without --force.")
    service.add_argument("--root", type=Path, default=Path("/"), help="install under this folder (default /)")
    profiles = service.add_mutually_exclusive_group()
    profiles.add_argument("--profile", choices=PROFILES, default="rpi4",
                          help="device profile to copy to agent.toml (default rpi4)")
    profiles.add_argument("--no-profile", action="store_true",
                          help="the unit only: agent.toml comes from 'edge-agent enroll'")
    service.add_argument("--user", default="edge-agent", help="User= and Group= of the unit (default edge-agent)")
    service.add_argument("--venv", help="the venv whose bin/edge-agent the unit runs (default: this one)")
    service.add_argument("--force", action="store_true", help="replace an existing unit or profile")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "enroll":
        from edge_agent.enrolment import run_enroll

        return run_enroll(args)
    if args.command == "install-service":
        from edge_agent.service_install import run_install_service

        return run_install_service(args)
    try:
        config = load(args.config, args.set)
    except ConfigError as e:
        print(f"edge-agent: invalid configuration: {e}", file=sys.stderr)
        return 2
    if args.command == "validate-config":
        from edge_agent.effective_config import render

        print(render(args.config, args.set, config), end="")
        return 0
    if args.command == "rotate-key":
        import sqlite3

        from edge_agent.errors import KeyringError, MasterKeyError
        from edge_agent.key_rotation import rotate

        try:
            count = rotate(config.agent.data_dir, config.master_key_path)
        except (MasterKeyError, KeyringError, sqlite3.Error, OSError) as e:
            print(f"edge-agent: cannot rotate the master key: {e}", file=sys.stderr)
            return 2
        print(f"master key rotated: {count} user keys re-wrapped, no history re-encrypted")
        return 0
    from edge_agent.log_format import configure

    configure(config.agent.log_level, config.agent.log_format)
    # Imported here so validate-config stays fast and needs no runtime.
    from edge_agent.daemon import Agent
    from edge_agent.errors import KeyringError, MasterKeyError, StartupError, StoreError

    try:
        agent = Agent(config)
        agent.listen()
    except (StartupError, StoreError, KeyringError, MasterKeyError, OSError) as e:
        # OSError: a data directory or token file the agent's user cannot read or write
        print(f"edge-agent: cannot start: {e}", file=sys.stderr)
        return 2
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
