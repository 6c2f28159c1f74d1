"""The business rules this device applies: the accepted signed document, kept in ``rules.envelope``.

The MQTT worker hands each message of ``<prefix>/<fleet>/rules`` and of the device's own
``.../rules/<device_id>`` to :meth:`RulesStore.on_message`. A document is accepted only by the
trust rules of :mod:`shared.fleet_documents` (signed by a trusted key, fleet, targets, expiry, a version
above the accepted one); it is then written atomically (temp file, fsync, rename) before it is
used, and read back and verified again at start-up, so the rules and their version (the replay
guard) survive a restart. As with model manifests, the device runs the newest version of the two
topics; an older one on the other kind of topic is normal and not reported. An accepted document
that expires keeps applying (a frozen channel must not unblock items); the status says it is stale.

:meth:`RulesStore.applied` resolves the active rules against the catalogue of the model serving
(cached per catalogue and per set of active rules) for :func:`shared.recommendation.recommend`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.durable_files import write_atomic
from shared.business_rules import AppliedRules, RulesDocument, apply_to, parse_rules
from shared.catalog import Catalog
from shared.errors import RollbackRejected, SignatureError, UpdateRejected
from shared.fleet_documents import check_header, parse_time, signed_text
from shared.signing import MAX_ENVELOPE_BYTES, TrustedKeys

log = logging.getLogger(__name__)

RULES_FILE = "rules.envelope"
#: Largest rules envelope accepted (1,000 rules take about 150 KB).
MAX_RULES_BYTES = 512 * 1024


class RulesStore:
    def __init__(self, data_dir: Path, trusted: Ed25519PublicKey | TrustedKeys, *, fleet: str, device_id: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._path = data_dir / RULES_FILE
        self._trusted, self._fleet, self._device, self._clock = trusted, fleet, device_id, clock
        self._lock = threading.Lock()
        self._document: RulesDocument | None = None
        self._envelope = b""
        self._cache: tuple[tuple[int, int, tuple[bool, ...]], AppliedRules] | None = None
        self._windows: list[tuple[float, float]] = []  # each rule's (from, until) in epoch seconds
        self._last: dict[str, object] | None = None
        self._load()

    def _load(self) -> None:
        try:
            envelope = self._path.read_bytes()
            self._use(parse_rules(signed_text(envelope, self._trusted, MAX_RULES_BYTES, stored=True)), envelope)
        except FileNotFoundError:
            return
        except (OSError, UpdateRejected) as e:  # damaged, or signed by a key revoked since
            log.error("the stored business rules in %s cannot be used (%s); none apply until the next document",
                      self._path, e)

    def _use(self, document: RulesDocument, envelope: bytes) -> None:
        windows = [(-math.inf if r.valid_from is None else parse_time(r.valid_from, "from").timestamp(),
                    math.inf if r.valid_until is None else parse_time(r.valid_until, "until").timestamp())
                   for r in document.rules]
        with self._lock:
            self._document, self._envelope, self._cache, self._windows = document, envelope, None, windows

    @property
    def document(self) -> RulesDocument | None:
        return self._document

    def _report(self, result: str, version: int | None, reason: str) -> None:
        self._last = {"result": result, "version": version, "reason": reason[:300], "at": round(self._clock(), 3)}

    def on_message(self, envelope: bytes, device_topic: bool) -> None:
        """A rules document from the fleet's topic, or (``device_topic``) from this device's own."""
        if not envelope or envelope == self._envelope:
            return  # cleared, or the document applied (delivered again after a reconnect)
        current = self._document
        try:
            document = parse_rules(signed_text(envelope, self._trusted, min(MAX_RULES_BYTES, MAX_ENVELOPE_BYTES)))
            check_header(document.header, fleet=self._fleet, device_id=self._device,
                         now=datetime.fromtimestamp(self._clock(), UTC),
                         newest=None if current is None else current.version)
        except RollbackRejected as e:
            if current is not None and device_topic != bool(current.header.targets):
                return  # the older document of the other topic: the newest of the two applies
            self._report("rejected", None, f"{e.reason}: {e}")
            return
        except SignatureError as e:
            self._report("rejected", None, f"{e.reason}: {e}")
            return
        except UpdateRejected as e:
            self._report("rejected", None, f"{e.reason}: {e}")
            return
        try:
            write_atomic(self._path, envelope)
        except OSError as e:
            log.error("could not store business rules version %d: %s", document.version, e)
            self._report("failed", document.version, f"storage: {e}")
            return
        self._use(document, envelope)
        counts = document.counts()
        log.info("business rules version %d accepted: %s", document.version, counts)
        targeted = " (targeted at this device)" if document.header.targets else ""
        self._report("accepted", document.version, ", ".join(f"{n} {a}" for a, n in counts.items()) + targeted)

    def applied(self, catalog: Catalog) -> AppliedRules | None:
        """The rules active now, resolved against ``catalog``; None without a document."""
        with self._lock:
            document, windows = self._document, self._windows
        if document is None:
            return None
        seconds = self._clock()
        key = (id(catalog), document.version, tuple(start <= seconds < end for start, end in windows))
        cached = self._cache
        if cached is not None and cached[0] == key and cached[1].catalog is catalog:
            return cached[1]
        rules = apply_to(document, catalog, datetime.fromtimestamp(seconds, UTC))
        with self._lock:
            if self._document is document:
                self._cache = (key, rules)
        return rules

    def status(self) -> dict[str, object]:
        document = self._document
        now = datetime.fromtimestamp(self._clock(), UTC)
        if document is None:
            return {"version": None, "expires": None, "stale": None, "targeted": False,
                    "counts": {}, "last": self._last}
        return {"version": document.version, "expires": document.header.expires,
                "stale": document.header.expires_at <= now, "targeted": bool(document.header.targets),
                "counts": document.counts(now), "last": self._last}
