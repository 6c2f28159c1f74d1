"""The lifecycle journal on disk: one record, ``models/active.json``, replaced atomically.

It holds the pointer (``version``, ``previous``) where it always was, so a kill -9 at any moment
still leaves it naming a complete version, and beside it what the agent kept in three more files
before (``loading.json``, ``trial.json``, ``refused.json``). An agent upgraded from then reads
those files once, while its record has no journal schema, and folds them into the journal.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edge_agent.durable_files import write_atomic
from edge_agent.journal import Journal, is_journal

log = logging.getLogger(__name__)

JOURNAL_FILE = "active.json"
#: The files the journal replaces, besides the pointer it extends.
LEGACY_FILES = ("loading.json", "trial.json", "refused.json")


def _read_json(path: Path) -> object:
    """The JSON in ``path``; None if it is missing or not JSON (a torn legacy write)."""
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


class JournalFile:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / JOURNAL_FILE

    def read(self) -> Journal:
        record = _read_json(self.path)
        if is_journal(record):
            return Journal.from_json(record)
        legacy = [self.folder / name for name in LEGACY_FILES]
        journal = Journal.from_parts(record, *(_read_json(path) for path in legacy))
        if any(path.exists() for path in legacy):
            self.write(journal)  # first: a kill before the files go leaves the journal to read
            for path in legacy:
                path.unlink(missing_ok=True)
            log.info("model lifecycle state moved into the journal %s", self.path)
        return journal

    def write(self, journal: Journal) -> None:
        write_atomic(self.path, json.dumps(journal.to_json()).encode())
