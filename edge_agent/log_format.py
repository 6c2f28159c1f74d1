"""How the agent's log lines look (``agent.log_format``): ``text`` for a person reading the journal,
``json`` for a log shipper: one JSON object a line with ``time`` (UTC, ISO 8601), ``level``,
``logger``, ``message``, and ``exception`` when there is a traceback.

Only the formatting changes: the messages are the same ones, which never carry a shopper's id or
data, nor a secret (each module's logging keeps to that; this one adds no fields from the record's
arguments or ``extra``).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, log_format: str) -> None:
    """Send the root logger's records to stderr (the journal under systemd) in ``log_format``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
