"""The local cloud's memory: resources, objects and the event outbox in one SQLite file.

Everything a restart needs lives here: what jobs and endpoints exist and in which state,
which objects each bucket holds (with their ETags), and every event with whether it has
been delivered. Writers in other processes (``sagedrop drop`` while ``sagedrop up`` runs)
share it safely through SQLite's WAL mode.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL, key TEXT NOT NULL, etag TEXT NOT NULL, size INTEGER NOT NULL,
    content_type TEXT NOT NULL, modified REAL NOT NULL, PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, kind TEXT NOT NULL,
    body TEXT NOT NULL, created REAL NOT NULL, delivered REAL, outcome TEXT, claimed REAL
);
"""
# An event's life: pending (claimed and delivered NULL) → claimed (a deliverer runs its
# handlers) → delivered (every handler finished; ``outcome`` says how).


class State:
    """Thread-safe access to the SQLite file; each call is its own short transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, timeout=30, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(events)")}
        if "claimed" not in columns:  # a state file from before claims existed
            self._db.execute("ALTER TABLE events ADD COLUMN claimed REAL")
        self.new_event = threading.Event()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # Resources: training jobs, tuning jobs, models, endpoint configs, endpoints.
    def put(self, kind: str, name: str, data: dict) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?)",
                (kind, name, json.dumps(data, default=str), time.time()),
            )

    def insert(self, kind: str, name: str, data: dict) -> bool:
        """Create unless it exists; False when the name is taken (AWS's ResourceInUse)."""
        with self.transaction() as db:
            taken = db.execute(
                "SELECT 1 FROM resources WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            if taken:
                return False
            db.execute(
                "INSERT INTO resources VALUES (?, ?, ?, ?)",
                (kind, name, json.dumps(data, default=str), time.time()),
            )
            return True

    def get(self, kind: str, name: str) -> dict | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM resources WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def record(self, kind: str, name: str) -> dict:
        """A record that must exist (one this process made); KeyError when it does not."""
        found = self.get(kind, name)
        if found is None:
            raise KeyError(f"no {kind} named {name!r} in the local state")
        return found

    def update(self, kind: str, name: str, **changes) -> dict:
        with self.transaction() as db:
            row = db.execute(
                "SELECT data FROM resources WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
            if row is None:
                raise KeyError(f"{kind} {name}")
            data = {**json.loads(row[0]), **changes}
            db.execute(
                "UPDATE resources SET data = ?, updated = ? WHERE kind = ? AND name = ?",
                (json.dumps(data, default=str), time.time(), kind, name),
            )
        return data

    def delete(self, kind: str, name: str) -> bool:
        with self.transaction() as db:
            cursor = db.execute("DELETE FROM resources WHERE kind = ? AND name = ?", (kind, name))
            return cursor.rowcount > 0

    def all(self, kind: str) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM resources WHERE kind = ? ORDER BY rowid", (kind,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    # Objects of the folder-backed S3.
    def put_object(
        self,
        bucket: str,
        key: str,
        etag: str,
        size: int,
        content_type: str,
        event: tuple[str, dict] | None = None,
    ) -> None:
        """Record an object and, in the same transaction, the ``(kind, body)`` event its
        write causes: a crash keeps both or neither."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)",
                (bucket, key, etag, size, content_type, time.time()),
            )
            if event is not None:
                self._insert_event(db, event[0], event[1], str(uuid.uuid4()))
        if event is not None:
            self.new_event.set()

    def object(self, bucket: str, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute(
                "SELECT etag, size, content_type, modified FROM objects "
                "WHERE bucket = ? AND key = ?",
                (bucket, key),
            ).fetchone()
        if row is None:
            return None
        return dict(zip(("etag", "size", "content_type", "modified"), row, strict=True))

    def delete_object(self, bucket: str, key: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM objects WHERE bucket = ? AND key = ?", (bucket, key))

    # The event outbox: written with the change that caused it, delivered at least once.
    def add_event(self, kind: str, body: dict, event_id: str | None = None) -> str:
        """Queue an event. A deterministic ``event_id`` makes the call idempotent: the same
        id queued again (a restart re-announcing a finished job) is ignored."""
        event_id = event_id or str(uuid.uuid4())
        with self.transaction() as db:
            self._insert_event(db, kind, body, event_id)
        self.new_event.set()
        return event_id

    @staticmethod
    def _insert_event(db: sqlite3.Connection, kind: str, body: dict, event_id: str) -> None:
        db.execute(
            "INSERT OR IGNORE INTO events (id, kind, body, created) VALUES (?, ?, ?, ?)",
            (event_id, kind, json.dumps(body, default=str), time.time()),
        )

    def pending_events(self, limit: int = 32) -> list[tuple[str, str, dict]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, body FROM events WHERE delivered IS NULL AND claimed IS NULL "
                "ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [(r[0], r[1], json.loads(r[2])) for r in rows]

    def claim_event(self, event_id: str) -> bool:
        """Take an event to run its handlers; False when someone else has it. It stays
        claimed, not delivered, until ``finish_event``: a crash in between leaves it for
        ``release_claims`` to hand out again (at-least-once, like Lambda)."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE events SET claimed = ? WHERE id = ? AND claimed IS NULL "
                "AND delivered IS NULL",
                (time.time(), event_id),
            )
            return cursor.rowcount == 1

    def finish_event(self, event_id: str, outcome: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE events SET delivered = ?, outcome = ? WHERE id = ?",
                (time.time(), outcome, event_id),
            )

    def release_claims(self) -> int:
        """At start, with this root's lock held: events whose handlers never finished
        (the process died) are pending again. Returns how many."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE events SET claimed = NULL WHERE delivered IS NULL AND claimed IS NOT NULL"
            )
            count = cursor.rowcount
        if count:
            self.new_event.set()
        return count

    def prune_events(self, older_than: float, batch: int = 1000, now: float | None = None) -> int:
        """Forget delivered events whose delivery is more than ``older_than`` seconds old,
        at most ``batch`` per transaction (a long prune never holds the writers up), so
        the file stops growing with every image. Pending and claimed events are never
        touched: only what is done is forgotten. Returns how many went."""
        cutoff = (time.time() if now is None else now) - older_than
        removed = 0
        while True:
            with self.transaction() as db:
                cursor = db.execute(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE delivered "
                    "IS NOT NULL AND delivered < ? ORDER BY seq LIMIT ?)",
                    (cutoff, batch),
                )
                count = cursor.rowcount
            removed += count
            if count < batch:
                return removed

    def unfinished_events(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM events WHERE delivered IS NULL").fetchone()
        return row[0]

    def event_outcomes(self) -> list[dict]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, body, delivered, outcome, claimed FROM events ORDER BY seq"
            ).fetchall()
        return [
            {
                "id": r[0],
                "kind": r[1],
                "body": json.loads(r[2]),
                "delivered": r[3],
                "outcome": r[4],
                "claimed": r[5],
            }
            for r in rows
        ]
