"""The dashboard's memory: devices, the last hour of scores, alerts and acknowledgements, in one SQLite file.

Alerts are keyed by `event_id`, so a re-delivered or replayed alert is stored once (`add_alert`
says whether it was new). Acknowledgements live in their own table, keyed by `event_id` too: an
ack may arrive before its alert (a retained ack seen at start-up) and still applies when the alert
comes. Everything is bounded: the newest `max_alerts` alerts (and twice as many acks), and scores
of the last `history_s` seconds (by the device's `ts`), pruned as they come in.

One connection, used from the MQTT thread (writes) and the web server (reads) under a lock; WAL
with `synchronous=NORMAL`, so a commit is not an fsync (a power cut may lose the last second of
history, never corrupt the file). Rows come back as plain dicts, ready for JSON.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .payloads import Ack, Alert

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    event_id TEXT PRIMARY KEY, site TEXT NOT NULL, device TEXT NOT NULL, machine TEXT NOT NULL,
    machine_id TEXT, ts REAL NOT NULL, score REAL NOT NULL, threshold REAL NOT NULL, scorer TEXT NOT NULL,
    model TEXT NOT NULL, severity TEXT NOT NULL, window_start REAL NOT NULL, window_end REAL NOT NULL,
    source TEXT, received REAL NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (ts);
CREATE TABLE IF NOT EXISTS acks (
    event_id TEXT PRIMARY KEY, ts REAL NOT NULL, by TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    site TEXT NOT NULL, device TEXT NOT NULL, status TEXT, status_received REAL, machine TEXT, machine_id TEXT,
    model TEXT, scorer TEXT, threshold REAL, last_score REAL, last_ts REAL, PRIMARY KEY (site, device));
CREATE TABLE IF NOT EXISTS scores (
    site TEXT NOT NULL, device TEXT NOT NULL, ts REAL NOT NULL, score REAL NOT NULL, threshold REAL);
CREATE INDEX IF NOT EXISTS scores_by_series ON scores (site, device, ts);
CREATE INDEX IF NOT EXISTS scores_by_time ON scores (ts);
"""

_ALERT_COLUMNS = ("event_id", "site", "device", "machine", "machine_id", "ts", "score", "threshold", "scorer",
                  "model", "severity", "window_start", "window_end", "source", "received")
_DEVICE_COLUMNS = ("site", "device", "status", "status_received", "machine", "machine_id", "model", "scorer",
                   "threshold", "last_score", "last_ts")


class Store:
    """SQLite-backed state of the dashboard. Thread-safe; use as a context manager or call `close()`."""

    def __init__(self, path: str | Path, max_alerts: int = 10_000, history_s: float = 3600.0) -> None:
        if max_alerts < 1:
            raise ValueError("max_alerts must be at least 1")
        self.path = str(path)
        self.max_alerts = max_alerts
        self.history_s = history_s
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._since_prune = 0
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._n_alerts = int(self._db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes (MQTT thread) ----------------------------------------------------------------------

    def set_status(self, site: str, device: str, status: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO devices (site, device, status, status_received) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (site, device) DO UPDATE SET status = excluded.status, "
                "status_received = excluded.status_received", (site, device, status, time.time()))

    def describe_device(self, site: str, device: str, **known: Any) -> None:
        """Record what a message told about a device (machine, model, scorer, threshold); None keeps the old value."""
        known = {k: v for k, v in known.items() if v is not None}
        if not known:
            return
        names = list(known)
        updates = ", ".join(f"{k} = excluded.{k}" for k in names)
        with self._lock:
            self._db.execute(
                f"INSERT INTO devices (site, device, {', '.join(names)}) VALUES (?, ?{', ?' * len(names)}) "
                f"ON CONFLICT (site, device) DO UPDATE SET {updates}", (site, device, *known.values()))

    def add_score(self, site: str, device: str, ts: float, score: float, threshold: float | None) -> None:
        with self._lock:
            self._db.execute("INSERT INTO scores (site, device, ts, score, threshold) VALUES (?, ?, ?, ?, ?)",
                             (site, device, ts, score, threshold))
            self._db.execute(
                "INSERT INTO devices (site, device, last_score, last_ts) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (site, device) DO UPDATE SET last_score = excluded.last_score, "
                "last_ts = excluded.last_ts WHERE devices.last_ts IS NULL OR excluded.last_ts >= devices.last_ts",
                (site, device, score, ts))
            self._since_prune += 1
            if self._since_prune >= 500:
                self._prune_scores()

    def add_alert(self, site: str, alert: Alert, received: float | None = None) -> bool:
        """Store an alert; False if its event_id is already known (a duplicate delivery)."""
        row = {"site": site, "received": received or time.time(), **vars(alert)}
        with self._lock:
            cur = self._db.execute(
                f"INSERT OR IGNORE INTO alerts ({', '.join(_ALERT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(_ALERT_COLUMNS))})", [row[c] for c in _ALERT_COLUMNS])
            if cur.rowcount == 0:
                return False
            self._n_alerts += 1
            if self._n_alerts > self.max_alerts:  # a counter, so a burst does not scan the table per alert
                self._db.execute(
                    "DELETE FROM alerts WHERE event_id IN (SELECT event_id FROM alerts ORDER BY ts DESC, "
                    "received DESC LIMIT -1 OFFSET ?)", (self.max_alerts,))
                self._n_alerts = self.max_alerts
            return True

    def add_ack(self, ack: Ack) -> bool:
        """Store an acknowledgement; False if the event was already acknowledged (the first one stands)."""
        with self._lock:
            cur = self._db.execute("INSERT OR IGNORE INTO acks (event_id, ts, by) VALUES (?, ?, ?)",
                                   (ack.event_id, ack.ts, ack.by))
            if cur.rowcount == 0:
                return False
            self._db.execute("DELETE FROM acks WHERE event_id IN (SELECT event_id FROM acks ORDER BY ts DESC "
                             "LIMIT -1 OFFSET ?)", (2 * self.max_alerts,))
            return True

    def _prune_scores(self) -> None:
        self._since_prune = 0
        self._db.execute("DELETE FROM scores WHERE ts < ?", (time.time() - self.history_s,))

    # -- reads (web server) ------------------------------------------------------------------------

    def alert(self, event_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT a.*, k.ts AS ack_ts, k.by AS ack_by FROM alerts a "
                                   "LEFT JOIN acks k USING (event_id) WHERE event_id = ?", (event_id,)).fetchone()
        return dict(row) if row is not None else None

    def alerts(self, limit: int = 500) -> list[dict[str, Any]]:
        """The newest `limit` alerts, newest first, each with `ack_ts` / `ack_by` (None if not acknowledged)."""
        with self._lock:
            rows = self._db.execute("SELECT a.*, k.ts AS ack_ts, k.by AS ack_by FROM alerts a "
                                    "LEFT JOIN acks k USING (event_id) ORDER BY a.ts DESC, a.received DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [dict(r) for r in rows]

    def count_alerts(self) -> int:
        with self._lock:
            return self._n_alerts

    def devices(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM devices ORDER BY site, device")
            return [dict(r) for r in rows.fetchall()]

    def device(self, site: str, device: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_DEVICE_COLUMNS)} FROM devices WHERE site = ? AND device = ?",
                                   (site, device)).fetchone()
        return dict(row) if row is not None else None

    def series(self, since: float | None = None, max_points: int = 720) -> dict[str, list[list[float | None]]]:
        """Scores since `since` (default: the last `history_s`) as {"site/device": [[ts, score, threshold], ...]}.

        At most about `max_points` per device: the span is cut into that many equal buckets and each
        keeps its highest score (a peak is what an operator looks for), so a page that connects to
        50 devices scoring every second gets 36,000 points, not 180,000.
        """
        now = time.time()
        since = now - self.history_s if since is None else since
        bucket = max((now - since) / max_points, 1e-9)
        out: dict[str, list[list[float | None]]] = {}
        with self._lock:
            # SQLite returns the other columns of the row holding MAX(score) (a documented bare-column rule)
            rows = self._db.execute("SELECT site, device, ts, MAX(score), threshold FROM scores WHERE ts >= ? "
                                    "GROUP BY site, device, CAST((ts - ?) / ? AS INTEGER) ORDER BY site, device, ts",
                                    (since, since, bucket)).fetchall()
        for site, device, ts, score, threshold in rows:
            out.setdefault(f"{site}/{device}", []).append([ts, score, threshold])
        return out
