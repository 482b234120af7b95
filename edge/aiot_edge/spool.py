"""Durable outbox for alerts: an SQLite table that makes MQTT delivery at-least-once.

Every alert is written here (and fsynced) *before* anything tries to publish it, and its row is
deleted only when the broker acknowledges it (QoS 1 PUBACK). Rows come back in insertion order, so
alerts raised while the broker was down, or before the daemon was killed, are replayed in the order
they happened once a connection exists again. Telemetry is never spooled: a stale score is worth
nothing, a lost alert is a missed fault.

Storage: one SQLite file in WAL mode with `synchronous=FULL`, so a committed row survives a power
cut (SD cards on a Raspberry Pi do lose power). One connection, guarded by a lock: paho calls back
from its network thread while the daemon writes from the main thread.

The spool is bounded by `max_rows` and `max_bytes` (payload bytes). When it is full, the *newest*
alert is refused (not stored) and the oldest unsent ones are kept:

- an accepted row is a promise; dropping the oldest would silently break at-least-once delivery
  for alerts that were already accepted, while refusing is visible at the moment it happens
  (a loud warning and the `overflow` counter, which the daemon reports in its health lines);
- the first alerts of an outage mark when a fault *began*, which is what a maintenance engineer
  needs; later alerts during a long outage mostly repeat the same condition (the decision
  engine's cooldown already thins them), and the live state comes back with telemetry anyway;
- a disk that fills with alerts is a sign the link has been down for a long time, and the
  operator should find out from the log and counters, not from missing history.

A full disk (or any other write error) does not stop the daemon: a message that cannot be written
is kept in memory (at most `max_memory_rows`, counted in the same bounds), with a loud warning,
and handed out by `pending` after the rows on disk, so a connected publisher still delivers it.
Every later `put`, `pending` and `delete` first retries moving memory rows to disk, oldest first,
so the order on disk stays the order of raising. An acknowledgement whose DELETE cannot be written
is remembered and retried the same way. Memory rows die with the process: `close` logs how many.

It knows nothing about MQTT, the network or the payload format: rows are (topic, payload, qos).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .spool_integrity import integrity_problem, lost_wal_frames, move_aside

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order, never reused
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    qos      INTEGER NOT NULL,
    created  REAL    NOT NULL                     -- unix time the row was written
)
"""
# Rows that cannot be sent (a damaged file, a hand edit: qos 5, a NULL topic) are moved here with the
# reason, so one bad row neither blocks the rows behind it nor disappears without a trace.
_QUARANTINE = """
CREATE TABLE IF NOT EXISTS quarantine (
    id       INTEGER PRIMARY KEY,  -- the row's id in outbox
    topic    TEXT,
    payload  BLOB,
    qos      INTEGER,
    created  REAL,
    reason   TEXT NOT NULL,
    moved    REAL NOT NULL          -- unix time the row was quarantined
)
"""


class SpoolError(RuntimeError):
    """The spool file cannot be opened or written (permissions, disk, not an SQLite file)."""


@dataclass(frozen=True)
class SpoolItem:
    """One unsent message."""

    row_id: int
    topic: str
    payload: bytes
    qos: int
    created: float


def _row_problem(row: tuple[object, ...]) -> str | None:
    """Why an outbox row (id, topic, payload, qos, created) cannot be sent, or None when it can."""
    _, topic, payload, qos, created = row
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        return f"qos {qos!r} is not 0, 1 or 2"
    if not isinstance(topic, str) or not topic or any(c in topic for c in "+#\0"):
        return f"topic {topic!r} is not a topic to publish on"
    if not isinstance(payload, (bytes, str)):
        return f"payload is {type(payload).__name__}, not bytes"
    if not isinstance(created, (int, float)):
        return f"created {created!r} is not a time"
    return None


class Spool:
    """A bounded, thread-safe, crash-safe FIFO of messages waiting for a broker acknowledgement.

    Use as a context manager, or call `close()`. `put` returns the row id, or None when the spool
    is full (the message is refused, see the module docstring); `delete` removes a row once the
    broker acknowledged it; `pending` lists rows in insertion order.
    """

    def __init__(self, path: str | os.PathLike[str], max_rows: int = 10_000, max_bytes: int = 64 << 20,
                 max_memory_rows: int = 1_000) -> None:
        if max_rows < 1 or max_bytes < 1 or max_memory_rows < 0:
            raise ValueError(f"spool bounds must be positive, got max_rows={max_rows} max_bytes={max_bytes} "
                             f"max_memory_rows={max_memory_rows}")
        self.path = Path(path)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.max_memory_rows = max_memory_rows
        self.overflow = 0  # messages refused because the spool was full (since this process started)
        self.write_errors = 0  # writes the disk refused (each message then waited in memory)
        self._lock = threading.Lock()
        self._memory: list[SpoolItem] = []  # written nowhere yet (disk full): oldest first, negative ids
        self._next_memory_id = -1
        self._undeleted: set[int] = set()  # acknowledged rows whose DELETE the disk refused
        self._moved: dict[int, int] = {}  # memory id -> disk id, for rows that moved while in flight
        try:
            if self.path.parent != Path(""):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            lost = lost_wal_frames(self.path)  # before SQLite opens the file and rebuilds the WAL index
            self._db = self._connect()
            problem = integrity_problem(self._db)
            if problem is not None:
                self._db.close()
                aside = move_aside(self.path)
                log.error("spool %s failed its integrity check (%s): moved it to %s and started a new, empty spool; "
                          "alerts in the old file were not delivered (inspect it with sqlite3)", self.path, problem,
                          aside)
                lost = None
                self._db = self._connect()
            rows, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox").fetchone()
        except (sqlite3.Error, OSError) as err:
            raise SpoolError(f"cannot open spool {self.path}: {err}") from err
        if lost is not None:
            log.error("spool %s: its write-ahead log (%s-wal) lost data after a crash: %d of %d committed frames "
                      "are missing or damaged, so alerts written before the crash may be lost (the disk or "
                      "someone removed or changed the file)", self.path, self.path, lost[0] - lost[1], lost[0])
        self._rows, self._bytes = int(rows), int(size)
        if self._rows:
            log.info("spool %s holds %d unsent message(s) from an earlier run", self.path, self._rows)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit; every statement is its own durable transaction.
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(_SCHEMA)
            db.execute(_QUARANTINE)
        except sqlite3.DatabaseError as err:
            if "not a database" not in str(err) and "malformed" not in str(err):
                db.close()
                raise
        return db

    # -- context manager -------------------------------------------------------------------------

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the database; unsent rows stay on disk for the next run."""
        with self._lock:
            if self._db is not None:
                self._retry_disk()
                if self._memory:
                    log.error("spool %s: %d unsent message(s) could not be written to disk (disk full?) and are "
                              "lost with this process", self.path, len(self._memory))
                self._db.close()
                self._db = None  # type: ignore[assignment]

    # -- operations ------------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes | str, qos: int = 1) -> int | None:
        """Store a message durably; returns its row id, or None if the spool is full (refused)."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        with self._lock:
            if self._rows + 1 > self.max_rows or self._bytes + len(data) > self.max_bytes:
                self.overflow += 1
                log.warning("spool FULL (%d/%d rows, %d/%d bytes): refusing a new message on %s; "
                            "%d refused so far. The oldest unsent alerts are kept; check the broker link.",
                            self._rows, self.max_rows, self._bytes, self.max_bytes, topic, self.overflow)
                return None
            item = SpoolItem(0, topic, data, qos, time.time())
            row_id = self._insert(item) if self._retry_disk() else None
            if row_id is None:
                if len(self._memory) >= self.max_memory_rows:
                    self.overflow += 1
                    log.error("spool %s cannot be written and %d message(s) already wait in memory: refusing a "
                              "new message on %s; %d refused so far. Free disk space.", self.path,
                              len(self._memory), topic, self.overflow)
                    return None
                row_id = self._next_memory_id
                self._next_memory_id -= 1
                self._memory.append(SpoolItem(row_id, topic, data, qos, item.created))
            self._rows += 1
            self._bytes += len(data)
            return row_id

    def _insert(self, item: SpoolItem) -> int | None:
        """INSERT one row; None (logged, counted) when the disk refuses it. Call with the lock held."""
        try:
            cur = self._db.execute("INSERT INTO outbox (topic, payload, qos, created) VALUES (?, ?, ?, ?)",
                                   (item.topic, item.payload, item.qos, item.created))
        except (sqlite3.Error, OSError) as err:
            self.write_errors += 1
            if self.write_errors & (self.write_errors - 1) == 0:  # at 1, 2, 4, 8, ...: loud but bounded
                log.error("cannot write to spool %s: %s; keeping alerts in memory (%d there now, at most %d) and "
                          "retrying on every alert. Free disk space: alerts in memory are lost if the daemon stops.",
                          self.path, err, len(self._memory) + 1, self.max_memory_rows)
            return None
        return int(cur.lastrowid)

    def _retry_disk(self) -> bool:
        """Retry refused DELETEs and move memory rows to disk, oldest first; True when nothing is left over.

        Call with the lock held. A memory row that moves may be in flight under its old (negative)
        id: `_moved` maps it, so its acknowledgement deletes the disk row and `pending` skips it.
        """
        if not self._memory and not self._undeleted:
            return True
        for row_id in sorted(self._undeleted):
            try:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            except (sqlite3.Error, OSError):
                return False
            self._undeleted.discard(row_id)
        while self._memory:
            new_id = self._insert(self._memory[0])
            if new_id is None:
                return False
            self._moved[self._memory.pop(0).row_id] = new_id
        log.warning("spool %s can be written again: every message kept in memory is on disk now", self.path)
        return True

    def pending(self, limit: int = 100, exclude: set[int] | frozenset[int] = frozenset()) -> list[SpoolItem]:
        """Up to `limit` unsent rows in insertion order, skipping the row ids in `exclude` (in flight).

        Rows on disk come first, then the ones kept in memory (they are always the newer ones).
        """
        with self._lock:
            self._retry_disk()
            skip = set(exclude) | {self._moved[i] for i in exclude if i in self._moved} | self._undeleted
            # Fetch enough to cover the skipped ids; the in-flight set is small (bounded by the publisher).
            rows = self._db.execute("SELECT id, topic, payload, qos, created FROM outbox ORDER BY id LIMIT ?",
                                    (limit + len(skip),)).fetchall()
            memory = [item for item in self._memory if item.row_id not in skip]
            items = []
            for r in rows:
                if r[0] in skip:
                    continue
                problem = _row_problem(r)
                if problem is not None:
                    self._quarantine(int(r[0]), problem)
                    continue
                items.append(SpoolItem(int(r[0]), r[1], bytes(r[2]), int(r[3]), float(r[4])))
        return (items + memory)[:limit]

    def quarantine(self, row_id: int, reason: str) -> bool:
        """Move a row that cannot be sent out of the outbox (kept in table `quarantine`); False if not there."""
        with self._lock:
            return self._quarantine(row_id, reason)

    def _quarantine(self, row_id: int, reason: str) -> bool:
        if row_id < 0:  # a memory row: there is no table to keep it in
            for i, item in enumerate(self._memory):
                if item.row_id == row_id:
                    del self._memory[i]
                    self._rows -= 1
                    self._bytes -= len(item.payload)
                    log.error("spool %s: message %d quarantined (dropped, it was in memory only): %s", self.path,
                              row_id, reason)
                    return True
            return False
        try:
            row = self._db.execute("SELECT LENGTH(payload) FROM outbox WHERE id = ?", (row_id,)).fetchone()
            if row is None:
                return False
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO quarantine (id, topic, payload, qos, created, reason, moved) "
                             "SELECT id, topic, payload, qos, created, ?, ? FROM outbox WHERE id = ?",
                             (reason, time.time(), row_id))
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            self._db.execute("COMMIT")
        except (sqlite3.Error, OSError) as err:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            log.error("spool %s: row %d cannot be sent (%s) and cannot be quarantined (%s); skipping it in this run",
                      self.path, row_id, reason, err)
            self._undeleted.add(row_id)  # skipped by pending; the DELETE is retried with the others
        else:
            log.error("spool %s: row %d quarantined: %s (kept in its table 'quarantine'; the rest is delivered)",
                      self.path, row_id, reason)
        self._rows -= 1
        self._bytes -= int(row[0] or 0)
        return True

    def delete(self, row_id: int) -> bool:
        """Remove an acknowledged row; returns False if it was not there (already deleted)."""
        with self._lock:
            row_id = self._moved.pop(row_id, row_id)
            if row_id < 0:  # still in memory
                for i, item in enumerate(self._memory):
                    if item.row_id == row_id:
                        del self._memory[i]
                        self._rows -= 1
                        self._bytes -= len(item.payload)
                        return True
                return False
            if row_id in self._undeleted:
                return False
            try:
                row = self._db.execute("SELECT LENGTH(payload) FROM outbox WHERE id = ?", (row_id,)).fetchone()
                if row is None:
                    return False
            except (sqlite3.Error, OSError) as err:
                raise SpoolError(f"cannot read spool {self.path}: {err}") from err
            try:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            except (sqlite3.Error, OSError) as err:
                # A full disk can refuse even a DELETE (WAL frames): the row counts as gone and
                # the DELETE is retried, so it is not sent again by this process.
                log.warning("cannot delete acknowledged row %d from spool %s: %s; retrying later", row_id,
                            self.path, err)
                self._undeleted.add(row_id)
            self._rows -= 1
            self._bytes -= int(row[0])
            return True

    def depth(self) -> int:
        """Number of unsent rows (on disk and in memory)."""
        with self._lock:
            return self._rows

    @property
    def memory_rows(self) -> int:
        """Unsent rows that wait in memory because the disk refused them."""
        with self._lock:
            return len(self._memory)

    def size_bytes(self) -> int:
        """Total payload bytes of unsent rows."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        return self.depth()
