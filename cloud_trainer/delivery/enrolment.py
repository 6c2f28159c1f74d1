"""Device enrolment and revocation on the fleet's PKI (``cloud-trainer fleet enroll`` / ``fleet revoke``).

An enrolment file is one JSON document (format in :mod:`shared.enrolment`) holding everything a device
needs to join the fleet: its client certificate and private key, the fleet CA certificate, the
model-signing public key and its agent profile. The certificates come from the fleet PKI script,
``firmware_configs/mosquitto/fleet_pki.py``, which this module loads and calls (it owns keys,
certificates, the ACL rules and the CRL); this module owns the profile and the file. Installing the
file on a device is :mod:`edge_agent.enrolment`'s job.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from cloud_trainer.errors import BadInput
from shared import enrolment, topics
from shared.errors import SignatureError
from shared.signing import load_public_key

PKI_SCRIPT = Path(__file__).resolve().parents[2] / "firmware_configs" / "mosquitto" / "fleet_pki.py"


def _fleet_pki() -> ModuleType:
    if not PKI_SCRIPT.exists():
        raise BadInput(f"{PKI_SCRIPT} is missing: enrolment runs from a checkout of the repository "
                       "(it uses the fleet PKI script)")
    spec = importlib.util.spec_from_file_location("fleet_pki", PKI_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ca(pki: Any, folder: Path) -> Any:
    try:
        return pki.load_ca(folder)
    except FileNotFoundError as e:
        raise BadInput(str(e)) from None


def _ca_fleet(ca_cert: Any) -> str | None:
    """The fleet named in the CA's common name, as fleet_pki.py writes it."""
    match = re.fullmatch(r"Edge Recommender fleet (\S+) CA", ca_cert.subject.rfc4514_string().removeprefix("CN="))
    return match.group(1) if match else None


def _base_profile(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BadInput(f"--profile {path}: cannot read it as TOML: {e}") from None


def _add_acl_rules(acl: Path, rules: str, device: str) -> bool:
    """Append ``rules`` (a ``user <device>`` block) to the broker's ACL unless the device has rules."""
    text = acl.read_text() if acl.exists() else ""
    if re.search(rf"^user {re.escape(device)}$", text, re.MULTILINE):
        return False
    acl.write_text(text.rstrip("\n") + "\n\n" + rules)
    return True


def _remove_acl_rules(acl: Path, device: str) -> bool:
    """Drop the ``user <device>`` block (up to the next ``user`` line) from the broker's ACL."""
    if not acl.exists():
        return False
    text = acl.read_text()
    pattern = rf"^user {re.escape(device)}\n(?:(?!user ).*\n?)*"
    changed = re.sub(pattern, "", text, flags=re.MULTILINE)
    if changed == text:
        return False
    acl.write_text(changed)
    return True


@dataclass(frozen=True)
class Enrolment:
    out: Path
    device_id: str
    fleet: str
    acl_changed: bool


def enroll(device: str, pki_dir: Path, broker_url: str, out: Path, *, signing_public_key: Path,
           fleet: str | None = None, channel: str = topics.STABLE, profile: Path | None = None,
           topic_prefix: str = topics.DEFAULT_PREFIX, days: int = 825, overwrite: bool = False) -> Enrolment:
    """Issue ``device``'s certificate (kept if it exists), add its ACL rules and write its enrolment file (0600)."""
    try:
        topics.check_name(device, "device id")
        topics.parse_broker_url(broker_url)
        topics.check_prefix(topic_prefix)
    except ValueError as e:
        raise BadInput(str(e)) from None
    if not broker_url.startswith("mqtts://"):
        raise BadInput(f"--broker {broker_url!r}: enrolled devices connect with their certificate: use mqtts://")
    if channel not in topics.CHANNELS:
        raise BadInput(f"--channel {channel!r}: one of {', '.join(topics.CHANNELS)}")
    if out.exists() and not overwrite:
        raise BadInput(f"{out} exists; pass --overwrite to replace it")
    try:
        signing_pem = signing_public_key.read_bytes()
        load_public_key(signing_pem)
    except (OSError, SignatureError) as e:
        raise BadInput(f"--signing-pub {signing_public_key}: {e}") from None
    pki = _fleet_pki()
    ca = _ca(pki, pki_dir)
    ca_fleet = _ca_fleet(ca[1])
    fleet = fleet or ca_fleet or "default"
    if ca_fleet is not None and fleet != ca_fleet:
        raise BadInput(f"--fleet {fleet!r}: the CA in {pki_dir} is fleet {ca_fleet!r}'s")
    if (pki_dir / "revoked" / f"{device}.pem").exists() and not (pki_dir / "clients" / f"{device}.pem").exists():
        print(f"note: {device} was revoked before; it gets a new certificate")
    raw = _base_profile(profile)
    base = dict(raw)
    key, cert = pki.issue_client(pki_dir, device, ca, days)
    acl_changed = _add_acl_rules(pki_dir / "acl", pki.agent_acl(topic_prefix, fleet, device), device)
    settings = {
        "agent": {"device_id": device, "fleet": fleet, "channel": channel},
        "model": {"trusted_public_key": f"{enrolment.DEFAULT_ETC}/{enrolment.SIGNING_PUB}"},
        "mqtt": {"url": broker_url, "topic_prefix": topic_prefix,
                 "ca_file": f"{enrolment.DEFAULT_ETC}/{enrolment.CA_FILE}",
                 "cert_file": f"{enrolment.DEFAULT_ETC}/{enrolment.CERT_FILE}",
                 "key_file": f"{enrolment.DEFAULT_ETC}/{enrolment.KEY_FILE}"},
    }
    for section, values in settings.items():
        base[section] = {**(raw.get(section) or {}), **values}
    from cryptography.hazmat.primitives import serialization

    document = {
        "format": enrolment.FORMAT, "version": enrolment.VERSION, "device_id": device, "fleet": fleet,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "profile": base,
        "files": {
            enrolment.CA_FILE: ca[1].public_bytes(serialization.Encoding.PEM).decode(),
            enrolment.CERT_FILE: cert.public_bytes(serialization.Encoding.PEM).decode(),
            enrolment.KEY_FILE: key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()).decode(),
            enrolment.SIGNING_PUB: signing_pem.decode(),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(document, f, indent=1)
    os.replace(temporary, out)
    return Enrolment(out, device, fleet, acl_changed)


def revoke(device: str, pki_dir: Path) -> int:
    """Add ``device``'s certificate to the CRL, move it to ``revoked/`` and drop its ACL rules.

    Returns how many certificates the CRL lists. The broker honours it after a reload (kill -HUP).
    """
    try:
        topics.check_name(device, "device id")
    except ValueError as e:
        raise BadInput(str(e)) from None
    pki = _fleet_pki()
    ca = _ca(pki, pki_dir)
    cert_path = pki_dir / "clients" / f"{device}.pem"
    if not cert_path.exists():
        raise BadInput(f"{cert_path} does not exist: {device} is not enrolled in {pki_dir}")
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    listed = pki.write_crl(pki_dir, ca, cert)
    (pki_dir / "revoked").mkdir(exist_ok=True, mode=0o700)
    os.replace(cert_path, pki_dir / "revoked" / f"{device}.pem")
    key_path = pki_dir / "clients" / f"{device}.key"
    if key_path.exists():
        key_path.unlink()
    _remove_acl_rules(pki_dir / "acl", device)
    return int(listed)
