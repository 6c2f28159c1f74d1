"""Publishing business rules: ``cloud-trainer rules publish --file rules.json --key ...``.

The file is ``{"rules": [...]}`` (the rules of :mod:`shared.business_rules`); it is validated with
the same parser agents use, each error naming the rule and its field. The document gets the fleet,
a version (default: the Unix time, so versions grow), a validity window and the targets, is
signed with the fleet key and published retained: on ``<prefix>/<fleet>/rules``, or for targeted
rules on each target device's own ``.../rules/<device_id>``. The version must be above the one
published where it goes (agents would refuse it as a replay otherwise).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cloud_trainer.delivery.broker import BrokerConnection, BrokerOptions
from cloud_trainer.errors import BadInput
from shared import topics
from shared.business_rules import SCHEMA, RulesDocument, parse_rules, parse_rules_list
from shared.errors import UpdateRejected
from shared.fleet_documents import Header
from shared.manifest import iso_utc
from shared.signing import load_private_key, sign, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RulesReport:
    version: int
    counts: dict[str, int]
    expires: str
    targets: tuple[str, ...]


def read_rules_file(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"cannot read the rules file {path}: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}: not JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(data, dict) or set(data) != {"rules"}:
        raise BadInput(f'{path}: must be an object with one key, "rules": a list of rules '
                       '(e.g. {"rules": [{"action": "block", "item": "85123A"}]})')
    return data


def rules_document(data: dict[str, object], fleet: str, version: int, valid_days: int,
                   targets: tuple[str, ...], now: datetime) -> RulesDocument:
    if not 1 <= valid_days <= 3650:
        raise BadInput("--valid-days must be from 1 to 3650")
    header = Header(SCHEMA, fleet, version, iso_utc(now), iso_utc(now + timedelta(days=valid_days)), targets)
    document = RulesDocument(header, parse_rules_list(data["rules"]))
    return parse_rules(document.to_json())  # the agents' parser: what they accept, and nothing else


def publish_rules(options: BrokerOptions, path: Path, key_path: Path, *, fleet: str, version: int | None,
                  valid_days: int, targets: tuple[str, ...] = ()) -> RulesReport:
    data = read_rules_file(path)
    try:
        document = rules_document(data, fleet, version or int(time.time()), valid_days, targets, datetime.now(UTC))
    except UpdateRejected as e:
        raise BadInput(f"{path}: {e}") from None
    key = load_private_key(key_path.read_bytes())
    envelope = sign(document.to_json(), key)
    destinations = ([topics.rules_topic(options.prefix, fleet, d) for d in targets] if targets
                    else [topics.rules_topic(options.prefix, fleet)])
    with BrokerConnection(options) as connection:
        for topic in destinations:
            published = connection.retained(topic)
            if published is None:
                continue
            try:
                previous = parse_rules(verify(published, key.public_key()))
            except UpdateRejected as e:
                log.warning("the broker holds rules on %s that are not ours (%s); replacing them", topic, e)
                continue
            if previous.version >= document.version:
                raise BadInput(f"version {document.version} is not above version {previous.version} published on "
                               f"{topic}: agents would refuse it as a replay; pass a higher --version")
        for topic in destinations:
            connection.publish(topic, envelope)
    return RulesReport(document.version, document.counts(), document.header.expires, targets)
