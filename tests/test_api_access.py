"""Who may call what (issue 19, point 4): scoped tokens, the route table, rate limits, TLS setups.

The logic is tested on its own (tokens file, constant-time match, token bucket, route table, TLS
file checks); tests/test_api_lan.py runs it in a real agent over real TLS.
"""

from __future__ import annotations

import datetime
import hmac
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from edge_agent import api_tokens, tls_files
from edge_agent.api_tokens import TokenBucket, TokenSet, load_tokens_file, parse_tokens, token_set
from edge_agent.config import from_mapping
from edge_agent.errors import ConfigError, StartupError
from shared.api_scopes import ANY, Scope, required_scope
from shared.openapi import document

KIOSK, TILL, OFFICE = "k" * 40, "t" * 40, "o" * 40
TOKENS = f"""# name scopes token
kiosk-1 recommend {KIOSK}
till-1  events,recommend {TILL}  rate_per_s=5 burst=2
office  admin {OFFICE}
"""


# -- the route table -----------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "scope"), [
    ("GET", "/v1/recommendations", Scope.RECOMMEND),
    ("POST", "/v1/recommendations/cart", Scope.RECOMMEND),
    ("GET", "/v1/items/SKU-1/related", Scope.RECOMMEND),
    ("GET", "/v1/scenes", Scope.RECOMMEND),
    ("POST", "/v1/events", Scope.EVENTS),
    ("GET", "/readyz", ANY),
    ("GET", "/v1/users/a/history", Scope.ADMIN),
    ("DELETE", "/v1/users/a", Scope.ADMIN),
    ("GET", "/v1/model", Scope.ADMIN),
    ("GET", "/metrics", Scope.ADMIN),
    # routes the table does not name, e.g. ones other engineers add later: admin (deny by default)
    ("PUT", "/v1/stock", Scope.ADMIN),
    ("GET", "/v1/rules", Scope.ADMIN),
    ("DELETE", "/v1/recommendations", Scope.ADMIN),  # a method the row does not name
    ("POST", "/v1/eventsx", Scope.ADMIN),  # a prefix matches whole path segments only
    ("GET", "/v1/recommendationsfoo", Scope.ADMIN),
])
def test_each_route_needs_its_scope_and_unknown_routes_need_admin(method: str, path: str, scope: str) -> None:
    assert required_scope(method, path) == scope


def test_the_api_document_names_each_operations_scope_and_its_refusals() -> None:
    paths = document()["paths"]
    assert paths["/v1/recommendations"]["get"]["x-required-scope"] == "recommend"
    assert paths["/v1/users/{user_id}"]["delete"]["x-required-scope"] == "admin"
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path == "/healthz":
                assert "x-required-scope" not in operation
                continue
            assert {"401", "429"} <= set(operation["responses"]), (method, path)
            assert ("403" in operation["responses"]) == (operation["x-required-scope"] != "any valid token")


# -- tokens ----------------------------------------------------------------------------------------

def test_a_tokens_file_gives_named_scoped_tokens() -> None:
    kiosk, till, office = parse_tokens(TOKENS, "tokens", 0.0, 20)
    assert (kiosk.name, kiosk.scopes, kiosk.rate_per_s) == ("kiosk-1", {"recommend"}, 0.0)
    assert (till.scopes, till.rate_per_s, till.burst) == ({"events", "recommend"}, 5.0, 2)
    assert office.allows("admin") and not office.allows("recommend") and office.allows(ANY)


@pytest.mark.parametrize(("line", "message"), [
    (f"kiosk recommend,shop {KIOSK}", "unknown scope 'shop'"),
    ("kiosk recommend short-token", "at least 32"),
    (f"kiosk recommend {KIOSK} rate_per_s=-1", "rate_per_s=N"),
    (f"kiosk recommend {KIOSK} speed=3", "rate_per_s=N"),
    ("kiosk recommend\n", "expected 'name scope"),
    (f"kiosk recommend {KIOSK}\nkiosk events {TILL}", "used twice"),
    (f"kiosk recommend {KIOSK}\ntill events {KIOSK}", "the same token as the one named 'kiosk'"),
    (f"k/1 recommend {KIOSK}", "the name must be"),
])
def test_a_bad_tokens_file_line_is_refused_with_its_line_number(line: str, message: str) -> None:
    with pytest.raises(StartupError, match=re.escape(message)) as e:
        parse_tokens(line, "tokens", 0.0, 20)
    assert "line " in str(e.value)
    assert KIOSK not in str(e.value)  # the error never echoes a token


def test_a_tokens_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    path.chmod(0o640)
    with pytest.raises(StartupError, match="chmod 600"):
        load_tokens_file(path, 0.0, 20)
    path.chmod(0o600)
    assert len(load_tokens_file(path, 0.0, 20)) == 3


def test_the_single_legacy_token_keeps_every_scope_beside_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    path.chmod(0o600)
    tokens = token_set("d" * 32, path, 0.0, 20)
    default = tokens.match("Bearer " + "d" * 32)
    assert default is not None and default.name == "default" and default.scopes == set(Scope)
    path.write_text(f"kiosk recommend {'d' * 32}\n")
    with pytest.raises(StartupError, match="single token"):
        token_set("d" * 32, path, 0.0, 20)


def test_matching_compares_every_token_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = TokenSet(parse_tokens(TOKENS, "tokens", 0.0, 20))
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(api_tokens.hmac, "compare_digest", counting)
    for header in (f"Bearer {KIOSK}", f"Bearer {OFFICE}", "Bearer nope", "Bearer " + KIOSK[:-1], ""):
        calls.clear()
        tokens.match(header)
        assert len(calls) == 3, header  # no early exit: the time does not tell which token (or how much) matched
    assert tokens.match(f"Bearer {TILL}").name == "till-1"  # type: ignore[union-attr]
    assert tokens.match(f"bearer  {TILL} ") is not None  # scheme case-insensitive, spaces trimmed
    assert tokens.match(f"Basic {TILL}") is None


def test_a_token_bucket_allows_the_burst_then_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(2.0, 3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # 1 token at 2/s: half a second
    now[0] += 0.5
    assert bucket.take() == 0.0 and bucket.take() > 0
    now[0] += 100  # refills to the burst, no more
    assert [bucket.take() for _ in range(4)][-1] > 0
    assert TokenBucket(0.0, 1).take() == 0.0  # rate 0: no limit


# -- configuration and TLS files ---------------------------------------------------------------------

@pytest.mark.parametrize(("api", "message"), [
    ({"tls_cert_file": "/c.pem"}, "api.tls_key_file: must be set with api.tls_cert_file"),
    ({"tls_cert_file": "/c.pem", "tls_key_file": "/k.pem", "server": "waitress"}, "TLS needs api.server"),
    ({"default_token": False}, "needs api.tokens_file"),
    ({"server": "gunicorn"}, "api.server: must be one of granian, waitress"),
])
def test_weak_or_incomplete_api_settings_are_refused(api: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_mapping({"api": api})


def certificate(tmp_path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, *, days: int = 30,
                start_days: int = -1, algorithm: hashes.HashAlgorithm | None = None,
                signer: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> tuple[Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pi-17.store.lan")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(days=start_days))
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(signer or key, algorithm or hashes.SHA256()))
    cert_file, key_file = tmp_path / "api.pem", tmp_path / "api.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


def test_a_sound_tls_setup_passes(tmp_path: Path) -> None:
    cert_file, key_file = certificate(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    assert tls_files.check(cert_file, key_file).cert_file == cert_file.resolve()


def test_weak_tls_setups_are_refused_naming_the_fix(tmp_path: Path) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    cases = {
        "RSA key of 1024 bits": lambda: certificate(tmp_path, rsa.generate_private_key(65537, 1024)),
        "EC key on secp224r1": lambda: certificate(tmp_path, ec.generate_private_key(ec.SECP224R1())),
        "expired on": lambda: certificate(tmp_path, p256, days=-1, start_days=-10),
        "not valid before": lambda: certificate(tmp_path, p256, start_days=2),
        "does not belong to the key": lambda: certificate(tmp_path, p256,
                                                          signer=ec.generate_private_key(ec.SECP256R1())),
    }
    for message, make in cases.items():
        cert_file, key_file = make()
        if message == "does not belong to the key":  # a certificate of another key
            other = ec.generate_private_key(ec.SECP256R1())
            key_file.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
        with pytest.raises(StartupError, match=re.escape(message)):
            tls_files.check(cert_file, key_file)
    cert_file, key_file = certificate(tmp_path, p256)
    key_file.chmod(0o644)
    with pytest.raises(StartupError, match="chmod 600"):
        tls_files.check(cert_file, key_file)
    key_file.chmod(0o600)
    key_file.write_bytes(p256.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(StartupError, match="the key is encrypted"):
        tls_files.check(cert_file, key_file)


@pytest.mark.parametrize("profile", ["rpi4.toml", "rpi5.toml"])
def test_the_pi_profiles_lan_block_is_a_valid_setup(profile: str) -> None:
    """The commented LAN block of each Pi profile, uncommented (host replaced), validates."""
    import tomllib

    text = (Path(__file__).resolve().parent.parent / "firmware_configs" / profile).read_text()
    lines = text.splitlines()
    block = lines.index(next(line for line in lines if line.startswith("# LAN API")))
    settings = [line[2:] for line in lines[block + 3:] if line.startswith("# ") and "=" in line]
    raw = tomllib.loads(text.replace('host = "127.0.0.1"', "") + "\n" + "\n".join(settings))
    api = from_mapping(raw).api
    assert (api.host, api.server, api.default_token) == ("0.0.0.0", "granian", False)
    assert api.tls_cert_file and api.tls_key_file and api.tokens_file and api.rate_limit_per_s > 0
