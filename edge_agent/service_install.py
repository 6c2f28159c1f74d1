"""``edge-agent install-service``: put the packaged systemd unit and a device profile in place.

Owns the device files shipped inside the wheel (``edge_agent/device_files/``: the canonical unit
and profiles; ``firmware_configs/`` in a checkout links to them) and writing them under a root
folder: ``/etc/systemd/system/edge-agent.service`` (0644), ``/etc/edge-agent/agent.toml`` (0644)
and ``/etc/edge-agent/README.md`` (0644, the unit's ``Documentation=``). It refuses to replace the
unit or the profile without ``force``, and checks every target before writing any, so a refusal
changes nothing. Users, keys, TLS files and ``systemctl`` stay with the operator (docs/install.md).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from edge_agent.durable_files import write_atomic
from edge_agent.errors import ServiceInstallError

PACKAGED_DIR = "device_files"
UNIT_NAME = "edge-agent.service"
README_NAME = "README.md"
PROFILES = ("rpi4", "rpi5", "x86_edge")
UNIT_PATH = Path("/etc/systemd/system") / UNIT_NAME
PROFILE_PATH = Path("/etc/edge-agent/agent.toml")
README_PATH = Path("/etc/edge-agent") / README_NAME
PACKAGED_VENV = "/opt/edge-agent"  # the venv the packaged unit's ExecStart= and ExecStartPre= name
FILE_MODE, DIR_MODE = 0o644, 0o755
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")  # what useradd accepts on Debian, no '$' machine accounts
_VENV = re.compile(r"/[A-Za-z0-9_./+-]*")  # absolute, and nothing systemd would need quoted


@dataclass(frozen=True)
class DeviceFile:
    """One file to write: its absolute path on the device, content, mode, and whether it may be
    replaced without ``force`` (the README is ours; the unit and the profile may carry edits)."""

    path: Path
    data: bytes
    mode: int = FILE_MODE
    replace_freely: bool = False


def packaged(name: str) -> bytes:
    """A file shipped in the wheel under ``edge_agent/device_files/``."""
    return resources.files("edge_agent").joinpath(PACKAGED_DIR, name).read_bytes()


def unit_text(unit: str, *, venv: str, user: str) -> str:
    """The packaged unit with its commands pointed at ``venv`` and ``User=``/``Group=`` set to ``user``."""
    if not _USER.fullmatch(user):
        raise ServiceInstallError(f"--user {user!r} is not a system user name (lower case, digits, '_', '-')")
    if not _VENV.fullmatch(venv) or venv.endswith("/"):
        raise ServiceInstallError(f"--venv {venv!r} must be an absolute path without spaces or a trailing '/'")
    old_bin = f"{PACKAGED_VENV}/bin/edge-agent"
    if unit.count(old_bin) != 2:  # ExecStartPre= and ExecStart=
        raise ServiceInstallError(f"the packaged unit no longer names {old_bin} twice: this wheel is broken")
    text = unit.replace(old_bin, f"{venv}/bin/edge-agent")
    for key in ("User", "Group"):
        text, found = re.subn(rf"^{key}=.*$", f"{key}={user}", text, flags=re.MULTILINE)
        if found != 1:
            raise ServiceInstallError(f"the packaged unit has {found} {key}= lines, expected 1: this wheel is broken")
    return text


def plan(*, profile: str | None, venv: str, user: str) -> list[DeviceFile]:
    """What ``install-service`` writes; ``profile`` None leaves agent.toml to ``edge-agent enroll``."""
    files = [
        DeviceFile(UNIT_PATH, unit_text(packaged(UNIT_NAME).decode(), venv=venv, user=user).encode()),
        DeviceFile(README_PATH, packaged(README_NAME), replace_freely=True),
    ]
    if profile is not None:
        if profile not in PROFILES:
            raise ServiceInstallError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
        files.append(DeviceFile(PROFILE_PATH, packaged(f"{profile}.toml")))
    return files


def install(files: list[DeviceFile], root: Path, *, force: bool = False) -> list[Path]:
    """Write ``files`` under ``root`` (``/`` on a device); the paths written."""
    if not root.is_dir():
        raise ServiceInstallError(f"--root {root} is not a folder")
    targets = [(root / f.path.relative_to("/"), f) for f in files]
    existing = [str(t) for t, f in targets if t.exists() and not f.replace_freely]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise ServiceInstallError(f"{' and '.join(existing)} {verb}: pass --force to replace (edits are lost)")
    for target, file in targets:
        try:
            _make_dirs(target.parent)
            write_atomic(target, file.data, file.mode)
            os.chmod(target, file.mode)  # write_atomic's mode is filtered by the umask
        except OSError as e:
            raise ServiceInstallError(f"cannot write {target}: {e} (run as root for --root /)") from e
    return [t for t, _ in targets]


def _make_dirs(folder: Path) -> None:
    """``folder`` and its missing parents, 0755 whatever the umask (the service user reads agent.toml)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, DIR_MODE)


def run_install_service(args: Any) -> int:
    """``edge-agent install-service [--root DIR] [--profile P | --no-profile] [--user U] [--venv DIR] [--force]``."""
    try:
        files = plan(profile=None if args.no_profile else args.profile, venv=args.venv or sys.prefix, user=args.user)
        written = install(files, args.root, force=args.force)
    except ServiceInstallError as e:
        print(f"edge-agent: install-service: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    if not args.no_profile:
        print(f"next: set device_id and the broker URL in {written[-1]}, then "
              f"'edge-agent validate-config {written[-1]}'")
    print("then: systemctl daemon-reload && systemctl enable --now edge-agent")
    return 0
