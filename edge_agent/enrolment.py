"""Installs an enrolment file on the device (``edge-agent enroll``): the TLS files, the model-signing
key and the profile, under the agent's configuration folder (default ``/etc/edge-agent``).

The file is parsed and checked by :mod:`shared.enrolment`; the profile is written with the paths of the
installed files and validated with the agent's own configuration rules (:func:`edge_agent.config.load`)
before anything is replaced. An existing enrolment (profile or device key) is replaced only with
``force``. Modes: the device key 0600 in a 0700 ``tls`` folder, owned by the user running the command
(or ``owner``); the rest 0644.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import load
from edge_agent.durable_files import write_atomic
from edge_agent.errors import ConfigError
from shared import enrolment
from shared.enrolment import EnrolmentError

PROFILE_FILE = "agent.toml"


@dataclass(frozen=True)
class Installed:
    profile: Path
    device_id: str
    fleet: str


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(key, v) for v in value) + "]"
    raise EnrolmentError(f"profile {key}: a {type(value).__name__} cannot be written to the profile")


def profile_text(profile: dict[str, Any], source: str) -> str:
    lines = [f"# Written by edge-agent enroll from {source}; the enrolment's settings (device, fleet,",
             "# broker, TLS files, model key) are those of the file; the rest came with it."]
    for section, values in profile.items():
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {_toml_value(f'{section}.{key}', value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def install(data: bytes, etc: Path, *, source: str, force: bool = False, owner: str | None = None) -> Installed:
    """Install the enrolment file ``data`` under ``etc``. Raises EnrolmentError, ConfigError or OSError."""
    document = enrolment.parse(data)
    existing = [p for p in (etc / PROFILE_FILE, etc / enrolment.KEY_FILE) if p.exists()]
    if existing and not force:
        raise EnrolmentError(f"{existing[0]} exists: this device is enrolled already; pass --force to replace "
                             "its enrolment")
    paths = {name: etc / name for name in enrolment.FILES}
    profile = {section: dict(values) for section, values in document.profile.items()}
    profile.setdefault("model", {})["trusted_public_key"] = str(paths[enrolment.SIGNING_PUB])
    mqtt = profile.setdefault("mqtt", {})
    mqtt.update(ca_file=str(paths[enrolment.CA_FILE]), cert_file=str(paths[enrolment.CERT_FILE]),
                key_file=str(paths[enrolment.KEY_FILE]))
    text = profile_text(profile, source)
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "tls").mkdir(mode=0o700, exist_ok=True)
    candidate = etc / f".{PROFILE_FILE}.new"
    candidate.write_text(text, encoding="utf-8")
    try:
        load(candidate)  # the agent's own validation, before anything is replaced
    except ConfigError as e:
        raise ConfigError(f"the enrolment's profile is not valid here: {e}") from None
    finally:
        candidate.unlink()
    for name, path in paths.items():
        write_atomic(path, document.files[name], 0o600 if name == enrolment.KEY_FILE else 0o644)
        os.chmod(path, 0o600 if name == enrolment.KEY_FILE else 0o644)  # an existing file keeps its mode
    write_atomic(etc / PROFILE_FILE, text.encode(), 0o644)
    os.chmod(etc / PROFILE_FILE, 0o644)
    if owner:
        for path in (etc / "tls", paths[enrolment.CA_FILE], paths[enrolment.CERT_FILE], paths[enrolment.KEY_FILE]):
            shutil.chown(path, owner, owner)
    return Installed(etc / PROFILE_FILE, document.device_id, document.fleet)


def run_enroll(args: Any) -> int:
    """``edge-agent enroll FILE [--etc DIR] [--force] [--owner USER]``; the exit status."""
    import sys

    try:
        data = Path(args.file).read_bytes()
        installed = install(data, args.etc, source=Path(args.file).name, force=args.force, owner=args.owner)
    except (EnrolmentError, ConfigError, OSError, LookupError) as e:
        print(f"edge-agent enroll: {args.file}: {e}", file=sys.stderr)
        return 2
    print(f"enrolled {installed.device_id} in fleet {installed.fleet}: {installed.profile} "
          f"(the device key is {args.etc / enrolment.KEY_FILE}, 0600); delete {args.file}: it holds the key")
    return 0
