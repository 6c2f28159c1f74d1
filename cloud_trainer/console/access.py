"""Who may read the console: anyone on the machine when it listens on loopback only; elsewhere only
holders of a token, which the console refuses to start without.

The token comes from a file only its owner can read (0600) or from an environment variable, never
from the command line (it would show in ``ps``). Requests carry it as ``Authorization: Bearer
<token>``, or as the password of HTTP Basic (what a browser prompts for; the user name is ignored).
Comparisons take constant time. Pure checks; the app (:mod:`.app`) applies them to each request.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
import socket
import stat
from pathlib import Path

from cloud_trainer.errors import BadInput

#: The environment variable that may hold the token (instead of --token-file).
TOKEN_ENV = "EDGE_REC_CONSOLE_TOKEN"
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (``localhost``, 127.0.0.1, ::1)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def load_token(token_file: Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The token from ``token_file`` (which must not be readable by group or others) or from
    :data:`TOKEN_ENV`; None when neither is given."""
    env = os.environ if environ is None else environ
    if token_file is not None:
        mode = token_file.stat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise BadInput(f"{token_file} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 {token_file}")
        token = token_file.read_text().strip()
    else:
        token = env.get(TOKEN_ENV, "").strip()
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise BadInput(f"the console token must have at least {MIN_TOKEN_CHARS} characters "
                       "(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def check_binding(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token."""
    if token is None and not is_loopback(host):
        raise BadInput(f"--host {host} is not a loopback address: the console needs a token there "
                       f"(--token-file FILE, mode 0600, or the {TOKEN_ENV} environment variable)")


def presented_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` header (Bearer, or Basic's password), None if there is none."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def authorized(expected: str | None, authorization: str | None) -> bool:
    """True without an expected token (loopback only), else when the header carries it."""
    if expected is None:
        return True
    given = presented_token(authorization)
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
