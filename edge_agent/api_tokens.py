"""The REST API's bearer tokens: named, scoped, rate-limited; read from a 0600 file, never from the profile.

``api.tokens_file`` holds one token a line::

    # name   scopes             token                                        [rate_per_s=N] [burst=N]
    kiosk-1  recommend          3q0b4Yx...(at least 32 characters)
    till-1   events,recommend   Hh1Zq...                                     rate_per_s=50 burst=100
    office   admin              ...

Scopes are those of :mod:`shared.api_scopes`; ``admin`` does not include the others (name them).
The single token of ``api.token_file`` / ``EDGE_AGENT_API_TOKEN`` is the token ``default`` with
every scope, so agents set up before scoped tokens existed keep working.

:meth:`TokenSet.match` compares the presented token with **every** token (``hmac.compare_digest`` of
SHA-256 digests, so lengths leak nothing either) and never stops early: its time does not depend on
which token matched, or how much of one. :class:`TokenBucket` is the per-token rate limit.
This module reads files and checks permissions; it knows nothing of HTTP.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.errors import StartupError
from shared.api_scopes import Scope

#: Shortest token accepted from the tokens file (the legacy single token keeps its 16).
MIN_TOKEN_CHARS = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what fits an HTTP header unquoted


class TokenBucket:
    """``rate_per_s`` requests a second on average, ``burst`` at once; thread-safe. Rate 0: no limit."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate_per_s, max(1, burst), clock
        self._tokens, self._at = float(self.burst), clock()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0.0 if the request may go ahead (one token taken), else the seconds until one will be there."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self.clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate


@dataclass
class ApiToken:
    name: str
    scopes: frozenset[str]
    secret: str = field(repr=False)
    rate_per_s: float = 0.0
    burst: int = 1
    digest: bytes = field(init=False, repr=False)
    bucket: TokenBucket = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.digest = hashlib.sha256(self.secret.encode()).digest()
        self.bucket = TokenBucket(self.rate_per_s, self.burst)

    def allows(self, scope: str) -> bool:
        return scope == "any" or scope in self.scopes


class TokenSet:
    """The tokens an agent accepts."""

    def __init__(self, tokens: Iterable[ApiToken]) -> None:
        self.tokens = tuple(tokens)
        if not self.tokens:
            raise StartupError("no API token: set api.tokens_file, or keep api.default_token = true")

    def match(self, authorization: str) -> ApiToken | None:
        """The token an ``Authorization: Bearer <token>`` header shows, if any (constant-time; see module)."""
        scheme, _, supplied = authorization.partition(" ")
        digest = hashlib.sha256(supplied.strip().encode(errors="surrogateescape")).digest()
        found = None
        for token in self.tokens:  # every token, always: no early exit
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found if scheme.lower() == "bearer" else None


def all_scopes_token(secret: str, rate_per_s: float, burst: int) -> ApiToken:
    """The single token of ``api.token_file`` / ``EDGE_AGENT_API_TOKEN``: every scope, named ``default``."""
    return ApiToken("default", frozenset(Scope), secret, rate_per_s, burst)


def parse_tokens(text: str, source: str, rate_per_s: float, burst: int) -> list[ApiToken]:
    """Tokens of a tokens file; ``rate_per_s``/``burst`` unless a line sets its own. StartupError names the line."""
    tokens: list[ApiToken] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split() if not line.lstrip().startswith("#") else []
        if not fields:
            continue
        where = f"{source} line {number}"
        if len(fields) < 3:
            raise StartupError(f"{where}: expected 'name scope[,scope] token [rate_per_s=N] [burst=N]'")
        name, scopes_text, secret, *options = fields
        if not _NAME.fullmatch(name):
            raise StartupError(f"{where}: the name must be 1-64 letters, digits, '.', '_' or '-'")
        scopes = frozenset(scopes_text.split(","))
        unknown = sorted(scopes - set(Scope))
        if unknown:
            raise StartupError(f"{where}: unknown scope {unknown[0]!r} (known: {', '.join(Scope)})")
        if len(secret) < MIN_TOKEN_CHARS or not _TOKEN.fullmatch(secret):
            raise StartupError(f"{where}: the token must be at least {MIN_TOKEN_CHARS} visible ASCII characters "
                               "(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")
        rate, size = rate_per_s, burst
        for option in options:
            key, _, value = option.partition("=")
            try:
                if key == "rate_per_s":
                    rate = float(value)
                elif key == "burst":
                    size = int(value)
                else:
                    raise ValueError
                if not (math.isfinite(rate) and rate >= 0 and size >= 1):
                    raise ValueError
            except ValueError:
                raise StartupError(f"{where}: {option!r} is not rate_per_s=N (>= 0) or burst=N (>= 1)") from None
        if any(t.name == name for t in tokens):
            raise StartupError(f"{where}: the name {name!r} is used twice")
        twin = next((t.name for t in tokens if t.secret == secret), None)
        if twin is not None:
            raise StartupError(f"{where}: the same token as the one named {twin!r}")
        tokens.append(ApiToken(name, scopes, secret, rate, size))
    return tokens


def load_tokens_file(path: Path, rate_per_s: float, burst: int) -> list[ApiToken]:
    """The tokens of ``path``, which only its owner may read or write (0600 or 0400)."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StartupError(f"api.tokens_file {path}: readable by others (mode {stat.filemode(mode)}): "
                               f"chmod 600 {path}")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise StartupError(f"cannot read api.tokens_file {path}: {e}") from e
    tokens = parse_tokens(text, str(path), rate_per_s, burst)
    if not tokens:
        raise StartupError(f"api.tokens_file {path}: no token in it")
    return tokens


def token_set(default_secret: str | None, tokens_file: Path | None, rate_per_s: float, burst: int) -> TokenSet:
    """The tokens an agent accepts: the all-scopes ``default`` one (if given) and those of ``tokens_file``."""
    tokens = [all_scopes_token(default_secret, rate_per_s, burst)] if default_secret else []
    for token in load_tokens_file(tokens_file, rate_per_s, burst) if tokens_file else []:
        if token.name == "default" and default_secret:
            raise StartupError(f"api.tokens_file {tokens_file}: the name 'default' is the single token of "
                               "api.token_file; call it something else, or set api.default_token = false")
        if default_secret and hmac.compare_digest(token.secret, default_secret):
            raise StartupError(f"api.tokens_file {tokens_file}: token {token.name!r} is the single token of "
                               "api.token_file, which has every scope; give it a token of its own")
        tokens.append(token)
    return TokenSet(tokens)
