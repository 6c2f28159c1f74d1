"""JSON from untrusted senders, with its nesting depth and its numbers bounded before parsing.

``json.loads`` recurses once per nesting level (100,000 levels raise ``RecursionError``) and turns
a 5,000-digit number into an int (``ValueError``: Python refuses more than 4,300 digits), so a
sender picks the exception. :func:`loads` measures the depth first, parses integers only up to
``MAX_INT_DIGITS`` digits and reports every failure as :class:`JsonRejected` (a ``ValueError``).
"""

from __future__ import annotations

import json
import math
import re

from shared.errors import JsonRejected

#: Nesting accepted; the documents of this project (manifests, envelopes, events) need 5 at most.
MAX_DEPTH = 32
#: Digits of an integer: any version, length or timestamp fits in 19 (a 64-bit integer).
MAX_INT_DIGITS = 19

# Strings are skipped whole (escapes included); what remains are brackets and scalars.
_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def depth(text: str) -> int:
    """The deepest nesting of objects and arrays in ``text`` (strings are not looked into)."""
    deepest = level = 0
    for match in _BRACKETS.finditer(_STRING.sub("", text)):
        if match.group() in "[{":
            level += 1
            deepest = max(deepest, level)
        else:
            level -= 1
    return deepest


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise JsonRejected(f"a number has more than {MAX_INT_DIGITS} digits")
    return int(digits)


def _finite_float(text: str) -> float:
    if len(text) > 64:
        raise JsonRejected("a number is longer than 64 characters")
    value = float(text)
    if not math.isfinite(value):
        raise JsonRejected("a number is out of range")
    return value


def _no_constant(name: str) -> float:
    raise JsonRejected(f"{name} is not JSON")


def loads(data: str | bytes, max_depth: int = MAX_DEPTH) -> object:
    """Parse ``data`` (UTF-8 if bytes); raises JsonRejected for anything not acceptable."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise JsonRejected("not UTF-8") from None
    if depth(text) > max_depth:
        raise JsonRejected(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant)
    except JsonRejected:
        raise
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise JsonRejected(f"not JSON: {str(e)[:80]}") from None
