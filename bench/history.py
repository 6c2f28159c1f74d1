"""History store latency: read a user's last 50 events (decrypt included) and durable writes.

Baseline, side by side in the same run: the same SQLite schema, settings and queries on plaintext
records, so the figure shows what encryption costs on top of the storage itself.
Writes bench/results/history.json. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge_agent.history_store import HistoryStore  # noqa: E402
from edge_agent.keyring import connect  # noqa: E402
from shared.events import parse_event  # noqa: E402

USERS, EVENTS_PER_USER, READ_LIMIT, READS, WRITES = 1000, 200, 50, 5000, 300


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": round(statistics.median(ordered), 4), "p99_ms": round(ordered[int(len(ordered) * 0.99)], 4)}


def main() -> None:
    rng = random.Random(1)
    folder = Path(tempfile.mkdtemp(prefix="bench-history-"))
    key = os.urandom(32)
    store = HistoryStore(folder / "enc", lambda: [key], max_events_per_user=EVENTS_PER_USER)
    plain = connect(folder / "plain.sqlite3")
    plain.execute("CREATE TABLE events (ref BLOB, seq INTEGER, record BLOB, PRIMARY KEY (ref, seq)) WITHOUT ROWID")
    now = time.time()
    print(f"filling {USERS} users x {EVENTS_PER_USER} events ...", flush=True)
    for u in range(USERS):
        events = [parse_event(f"user-{u}", f"{rng.randrange(100000):05d}A", "view", now - 1000 + i)
                  for i in range(EVENTS_PER_USER)]
        store.append(events)
        plain.execute("BEGIN")
        plain.executemany("INSERT INTO events VALUES (?, ?, ?)",
                          [(f"user-{u}".encode(), i, struct.pack(">dB", e.timestamp, 0) + e.item_id.encode())
                           for i, e in enumerate(events)])
        plain.execute("COMMIT")

    enc_reads, plain_reads = [], []
    for _ in range(READS):
        user = f"user-{rng.randrange(USERS)}"
        t = time.perf_counter()
        got = store.recent(user, READ_LIMIT)
        enc_reads.append((time.perf_counter() - t) * 1000)
        assert len(got) == READ_LIMIT
        t = time.perf_counter()
        rows = plain.execute("SELECT seq, record FROM events WHERE ref=? ORDER BY seq DESC LIMIT ?",
                             (user.encode(), READ_LIMIT)).fetchall()
        [(struct.unpack_from(">dB", r)[0], r[9:].decode()) for _, r in reversed(rows)]
        plain_reads.append((time.perf_counter() - t) * 1000)

    enc_writes, plain_writes = [], []
    for i in range(WRITES):
        user = f"user-{rng.randrange(USERS)}"
        event = parse_event(user, "NEW-1", "cart", now + i)
        t = time.perf_counter()
        store.append([event])
        enc_writes.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        plain.execute("INSERT INTO events VALUES (?, ?, ?)", (user.encode(), 10_000 + i, b"x" * 20))
        plain_writes.append((time.perf_counter() - t) * 1000)

    results = {
        "what": f"last {READ_LIMIT} events of one of {USERS} users x {EVENTS_PER_USER} events; "
                "one-event durable writes",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "read_encrypted": percentiles(enc_reads),
        "read_plaintext_baseline": percentiles(plain_reads),
        "write_encrypted_fsync": percentiles(enc_writes),
        "write_plaintext_fsync_baseline": percentiles(plain_writes),
        "store_bytes": sum(p.stat().st_size for p in (folder / "enc").iterdir()),
        "target": "read p50 < 0.2 ms",
    }
    out = ROOT / "bench" / "results" / "history.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    store.close()


if __name__ == "__main__":
    main()
