"""The enrolment file: what ``cloud-trainer fleet enroll`` writes and ``edge-agent enroll`` installs.

One JSON document (UTF-8), secret because it holds the device's private key::

    {"format": "edge-recommender-enrolment", "version": 1,
     "device_id": "pi-17", "fleet": "default", "created": "2026-12-01T21:00:00+00:00",
     "profile": {"agent": {...}, "model": {...}, "mqtt": {...}, ...},   # the agent profile, as TOML tables
     "files": {"tls/ca.pem": "-----BEGIN CERTIFICATE-----...",          # the fleet CA
               "tls/device.pem": "...", "tls/device.key": "...",        # the device's certificate and key
               "model-signing.pub": "..."}}                              # the pinned Ed25519 public key

File names are relative to the agent's configuration folder (``/etc/edge-agent``). This module only
parses and checks a document (no I/O): every PEM parses, the key matches the certificate, the
certificate was issued by the CA in the file and names the device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared import topics
from shared.errors import SignatureError
from shared.signing import load_public_key

FORMAT = "edge-recommender-enrolment"
VERSION = 1
MAX_BYTES = 1 << 20  # a real one is ~5 KB (a large base profile included)
DEFAULT_ETC = "/etc/edge-agent"
CA_FILE = "tls/ca.pem"
CERT_FILE = "tls/device.pem"
KEY_FILE = "tls/device.key"
SIGNING_PUB = "model-signing.pub"
FILES = (CA_FILE, CERT_FILE, KEY_FILE, SIGNING_PUB)


class EnrolmentError(ValueError):
    """The bytes are not a usable enrolment file (corrupt, foreign, or inconsistent)."""


@dataclass(frozen=True)
class EnrolmentDocument:
    device_id: str
    fleet: str
    profile: dict[str, Any]
    files: dict[str, bytes]


def _check_certificates(files: dict[str, bytes], device_id: str) -> None:
    try:
        ca = x509.load_pem_x509_certificate(files[CA_FILE])
        cert = x509.load_pem_x509_certificate(files[CERT_FILE])
        key = serialization.load_pem_private_key(files[KEY_FILE], password=None)
    except (ValueError, TypeError) as e:
        raise EnrolmentError(f"a certificate or the key does not parse: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise EnrolmentError(f"{KEY_FILE} is not an EC private key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise EnrolmentError(f"{KEY_FILE} does not belong to {CERT_FILE}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise EnrolmentError(f"{CERT_FILE} was not issued by {CA_FILE}: {e}") from None
    names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [device_id]:
        raise EnrolmentError(f"{CERT_FILE} names {names}, not the device {device_id!r}")
    try:
        load_public_key(files[SIGNING_PUB])
    except SignatureError as e:
        raise EnrolmentError(f"{SIGNING_PUB}: {e}") from None


def parse(data: bytes) -> EnrolmentDocument:
    """The checked document in ``data``; :class:`EnrolmentError` says what is wrong."""
    if len(data) > MAX_BYTES:
        raise EnrolmentError(f"{len(data)} bytes: too large for an enrolment file (at most {MAX_BYTES})")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EnrolmentError("not an enrolment file (not JSON; was it cut short or changed?)") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise EnrolmentError(f"not an enrolment file (no \"format\": \"{FORMAT}\")")
    if raw.get("version") != VERSION:
        raise EnrolmentError(f"enrolment format version {raw.get('version')!r}; this agent reads {VERSION}")
    device_id, fleet, profile, files = (raw.get(k) for k in ("device_id", "fleet", "profile", "files"))
    if not isinstance(device_id, str) or not isinstance(fleet, str):
        raise EnrolmentError("device_id and fleet must be strings")
    try:
        topics.check_name(device_id, "device_id")
        topics.check_name(fleet, "fleet")
    except ValueError as e:
        raise EnrolmentError(str(e)) from None
    if not isinstance(profile, dict) or not all(isinstance(v, dict) for v in profile.values()):
        raise EnrolmentError("profile must be an object of tables")
    if not isinstance(files, dict) or sorted(files) != sorted(FILES) \
            or not all(isinstance(v, str) for v in files.values()):
        raise EnrolmentError(f"files must hold exactly {', '.join(FILES)} as PEM text")
    contents = {name: str(text).encode() for name, text in files.items()}
    _check_certificates(contents, device_id)
    agent = profile.get("agent", {})
    if agent.get("device_id") != device_id or agent.get("fleet") != fleet:
        raise EnrolmentError("the profile's agent.device_id and agent.fleet differ from the file's")
    return EnrolmentDocument(device_id, fleet, profile, contents)
