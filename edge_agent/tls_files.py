"""The REST API's TLS certificate and key: checked at start-up, weak setups refused with the fix named.

Refused: a key file others may read or its group may write (0600, or 0640 with the agent's group,
as for the MQTT key), an encrypted key (the agent would need
the passphrase in a file next to it, which protects nothing), RSA keys under 2048 bits, EC keys
under 256 bits, DSA keys, a certificate signed with SHA-1 or MD5, one that is expired or not yet
valid, and a certificate that does not belong to the key. The protocol floor is TLS 1.2 (the
server, rustls, offers only AEAD cipher suites with forward secrecy). Only reads files.
"""

from __future__ import annotations

import datetime
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from edge_agent.errors import StartupError

MIN_RSA_BITS = 2048
MIN_EC_BITS = 256
WEAK_HASHES = ("sha1", "md5")


@dataclass(frozen=True)
class TlsFiles:
    cert_file: Path
    key_file: Path
    not_after: datetime.datetime


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise StartupError(f"cannot read {what} {path}: {e}") from e


def check(cert_file: Path, key_file: Path, now: datetime.datetime | None = None) -> TlsFiles:
    """The files if they make a sound TLS setup, else StartupError naming the problem and the fix."""
    now = now or datetime.datetime.now(datetime.UTC)
    key_bytes = _read(key_file, "api.tls_key_file")
    mode = key_file.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO):
        raise StartupError(f"api.tls_key_file {key_file}: open to others (mode {stat.filemode(mode)}): "
                           f"chmod 600 {key_file} (or 640 with the agent's group)")
    try:
        key = serialization.load_pem_private_key(key_bytes, password=None)
    except TypeError:
        raise StartupError(f"api.tls_key_file {key_file}: the key is encrypted; give the agent an unencrypted "
                           "key readable only by its user (openssl pkey -in KEY -out KEY.plain)") from None
    except ValueError as e:
        raise StartupError(f"api.tls_key_file {key_file}: not a PEM private key: {e}") from None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise StartupError(f"api.tls_key_file {key_file}: RSA key of {key.key_size} bits; use at least "
                           f"{MIN_RSA_BITS} (or EC P-256, see docs/security.md)")
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size < MIN_EC_BITS:
        raise StartupError(f"api.tls_key_file {key_file}: EC key on {key.curve.name}; use P-256 or larger")
    if isinstance(key, (dsa.DSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise StartupError(f"api.tls_key_file {key_file}: {type(key).__name__} keys are not usable for the API's "
                           "TLS; use EC P-256 or RSA 2048+")
    try:
        certs = x509.load_pem_x509_certificates(_read(cert_file, "api.tls_cert_file"))
    except ValueError as e:
        raise StartupError(f"api.tls_cert_file {cert_file}: not a PEM certificate: {e}") from None
    leaf = certs[0]
    algorithm = leaf.signature_hash_algorithm
    if algorithm is not None and algorithm.name in WEAK_HASHES:
        raise StartupError(f"api.tls_cert_file {cert_file}: signed with {algorithm.name}; issue it with sha256")
    if now < leaf.not_valid_before_utc:
        raise StartupError(f"api.tls_cert_file {cert_file}: not valid before "
                           f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check the clock)")
    if now > leaf.not_valid_after_utc:
        raise StartupError(f"api.tls_cert_file {cert_file}: expired on {leaf.not_valid_after_utc:%Y-%m-%d}; "
                           "issue a new one (docs/security.md)")
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (leaf.public_key().public_bytes(serialization.Encoding.DER, public)
            != key.public_key().public_bytes(serialization.Encoding.DER, public)):
        raise StartupError(f"api.tls_cert_file {cert_file} does not belong to the key in api.tls_key_file {key_file}")
    return TlsFiles(cert_file.resolve(), key_file.resolve(), leaf.not_valid_after_utc)
