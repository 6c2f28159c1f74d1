#!/usr/bin/env python3
"""Creates a fleet's MQTT PKI and broker configuration: CA, server certificate, client certificates,
ACL and mosquitto.conf, with the ``cryptography`` package.

    python firmware_configs/mosquitto/fleet_pki.py --out /etc/edge-rec-broker --fleet default \\
        --server-name broker.example.com --device pi-17 --device pi-42

Layout of ``--out``::

    ca.pem  ca.key                 the fleet CA (keep ca.key offline once devices are issued)
    server.pem  server.key         the broker's certificate (SAN: every --server-name)
    clients/<name>.pem  .key       one per device and one for the trainer; CN = MQTT username
    acl  mosquitto.conf            rendered from the templates beside this script
    crl.pem                        the CA's revocation list (the broker's crlfile; `cloud-trainer fleet revoke`)
    revoked/<name>.pem             certificates of revoked devices (out of clients/, so out of the ACL)
    api-ca.pem  api-ca.key         with --api-cert: the CA store apps trust for agents' REST APIs
    api/<name>.pem  .key           one per --api-cert: an agent's LAN API (api.tls_cert_file, tls_key_file)
    data/                          Mosquitto persistence and log

Run it again with more ``--device`` options to add devices: an existing CA and existing
certificates are kept (``--renew`` reissues the named clients). Private keys are written 0600.
Keys are ECDSA P-256; certificates are valid for ``--days``.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repo: topic names come from shared.topics

from shared import topics  # noqa: E402

Key = ec.EllipticCurvePrivateKey


def _write_key(path: Path, key: Key) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem(path: Path, suffix: str) -> Path:
    return path.parent / (path.name + suffix)  # not with_suffix: names may contain dots


def _load(path: Path) -> tuple[Key, x509.Certificate]:
    key = serialization.load_pem_private_key(_pem(path, ".key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SystemExit(f"{_pem(path, '.key')} is not an EC private key")
    return key, x509.load_pem_x509_certificate(_pem(path, ".pem").read_bytes())


def _certificate(subject: str, key: Key, issuer: tuple[Key, x509.Certificate] | None, days: int,
                 *, ca: bool = False, server_names: list[str] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_key, issuer_name = (key, name) if issuer is None else (issuer[0], issuer[1].subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False,
            content_commitment=False, data_encipherment=False, key_agreement=True, encipher_only=False,
            decipher_only=False), critical=True)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server_names:
        sans: list[x509.GeneralName] = []
        for server in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(server)))
            except ValueError:
                sans.append(x509.DNSName(server))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _issue(path: Path, subject: str, issuer: tuple[Key, x509.Certificate] | None, days: int, renew: bool,
           **kinds: object) -> tuple[Key, x509.Certificate]:
    if _pem(path, ".pem").exists() and _pem(path, ".key").exists() and not renew:
        return _load(path)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(subject, key, issuer, days, **kinds)  # type: ignore[arg-type]
    _write_key(_pem(path, ".key"), key)
    _pem(path, ".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    print(f"issued {_pem(path, '.pem')} (CN={subject})")
    return key, cert


def write_crl(out: Path, ca: tuple[Key, x509.Certificate], revoke: x509.Certificate | None = None) -> int:
    """(Re)sign ``out/crl.pem`` with every certificate it lists and ``revoke``; returns how many it lists.

    The CRL is valid as long as the CA: Mosquitto (OpenSSL) refuses every client once a CRL has expired.
    """
    now = datetime.datetime.now(datetime.UTC)
    path = out / "crl.pem"
    listed: list[x509.RevokedCertificate] = []
    if path.exists():
        listed = list(x509.load_pem_x509_crl(path.read_bytes()))
    if revoke is not None and all(r.serial_number != revoke.serial_number for r in listed):
        listed.append(x509.RevokedCertificateBuilder().serial_number(revoke.serial_number)
                      .revocation_date(now).build())
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca[1].subject)
               .last_update(now - datetime.timedelta(minutes=5)).next_update(ca[1].not_valid_after_utc))
    for entry in listed:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca[0], hashes.SHA256())
    temporary = out / "crl.pem.tmp"
    temporary.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    os.replace(temporary, path)
    return len(listed)


def load_ca(out: Path) -> tuple[Key, x509.Certificate]:
    """The fleet CA of a folder made by this script."""
    if not _pem(out / "ca", ".key").exists():
        raise FileNotFoundError(f"{out} holds no fleet CA (ca.key): make it with fleet_pki.py --out {out}")
    return _load(out / "ca")


def issue_client(out: Path, name: str, ca: tuple[Key, x509.Certificate], days: int) -> tuple[Key, x509.Certificate]:
    """``out/clients/<name>.pem`` and ``.key``: an existing pair is kept."""
    return _issue(out / "clients" / name, topics.check_name(name, "client name"), ca, days, False)


def agent_acl(prefix: str, fleet: str, device: str) -> str:
    model_topics = topics.manifest_topic(prefix, fleet).rsplit("/", 1)[0] + "/+"
    own_topics = model_topics + "/" + topics.check_name(device, "device id")  # versions targeted at it
    bundles = topics.bundle_topic(prefix, fleet, 0).rsplit("/", 1)[0] + "/#"
    rules = topics.rules_topic(prefix, fleet)  # the fleet's business rules, and those targeted at this device
    documents = (f"topic read {rules}\ntopic read {topics.rules_topic(prefix, fleet, device)}\n"
                 f"topic read {topics.erasure_topic(prefix, fleet)}\ntopic read {topics.keys_topic(prefix, fleet)}\n")
    return (f"user {device}\ntopic read {model_topics}\ntopic read {own_topics}\ntopic read {bundles}\n{documents}"
            f"topic write {topics.status_topic(prefix, fleet, device)}\n"
            f"topic write {topics.aggregates_topic(prefix, fleet, device)}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fleet", default="default")
    parser.add_argument("--device", action="append", default=[], help="a device id (repeat)")
    parser.add_argument("--trainer", default="cloud-trainer", help="the trainer's client name")
    parser.add_argument("--server-name", action="append", default=[],
                        help="broker DNS name or IP address clients connect to (repeat); default localhost, 127.0.0.1")
    parser.add_argument("--port", type=int, default=8883)
    parser.add_argument("--bind", default="0.0.0.0", help="listener address")
    parser.add_argument("--prefix", default=topics.DEFAULT_PREFIX)
    parser.add_argument("--days", type=int, default=825)
    parser.add_argument("--api-cert", action="append", default=[], metavar="NAME[,NAME...]",
                        help="a REST API server certificate for an agent's LAN listener (repeat): api/NAME.pem and "
                             ".key for the names and addresses apps use, issued by api-ca.pem, a CA of its own "
                             "(apps that trust it trust no broker or device certificate)")
    parser.add_argument("--renew", action="store_true", help="reissue the named clients' certificates")
    parser.add_argument("--no-persistence", action="store_true", help="test brokers: keep nothing on disk")
    parser.add_argument("--run-as", default="", help="user Mosquitto drops privileges to (default: mosquitto)")
    args = parser.parse_args(argv)
    try:
        topics.check_name(args.fleet, "fleet")
        for name in [*args.device, args.trainer]:
            topics.check_name(name, "client name")
    except ValueError as e:
        print(f"fleet_pki: {e}", file=sys.stderr)
        return 2
    if args.trainer in args.device:
        print("fleet_pki: the trainer's name must differ from every device id", file=sys.stderr)
        return 2
    out: Path = args.out
    (out / "clients").mkdir(parents=True, exist_ok=True, mode=0o700)
    (out / "data").mkdir(exist_ok=True, mode=0o700)
    ca = _issue(out / "ca", f"Edge Recommender fleet {args.fleet} CA", None, args.days * 4, False, ca=True)
    if not (out / "crl.pem").exists():
        write_crl(out, ca)
    _issue(out / "server", (args.server_name or ["localhost"])[0], ca, args.days, args.renew,
           server_names=args.server_name or ["localhost", "127.0.0.1"])
    for name in [args.trainer, *args.device]:
        _issue(out / "clients" / name, name, ca, args.days, args.renew)
    if args.api_cert:
        (out / "api").mkdir(exist_ok=True, mode=0o700)
        api_ca = _issue(out / "api-ca", f"Edge Recommender fleet {args.fleet} store API CA", None, args.days * 4,
                        False, ca=True)
        for names in args.api_cert:
            listed = [n.strip() for n in names.split(",") if n.strip()]
            _issue(out / "api" / listed[0], listed[0], api_ca, args.days, args.renew, server_names=listed)
    devices = sorted(p.name[: -len(".pem")] for p in (out / "clients").glob("*.pem")
                     if p.name != f"{args.trainer}.pem")
    acl = (HERE / "acl.template").read_text().format(
        trainer=args.trainer, prefix=args.prefix,
        agents="\n".join(agent_acl(args.prefix, args.fleet, d) for d in devices))
    (out / "acl").write_text(acl)
    config = (HERE / "mosquitto.conf.template").read_text().format(
        port=args.port, bind=args.bind, ca_file=out.resolve() / "ca.pem", server_cert=out.resolve() / "server.pem",
        server_key=out.resolve() / "server.key", crl_file=out.resolve() / "crl.pem", acl_file=out.resolve() / "acl",
        persistence="false" if args.no_persistence else "true", data_dir=(out / "data").resolve())
    (out / "mosquitto.conf").write_text(config + (f"user {args.run_as}\n" if args.run_as else ""))
    print(f"wrote {out / 'acl'} ({len(devices)} devices) and {out / 'mosquitto.conf'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
