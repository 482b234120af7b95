"""aiot_edge.spool: insertion order, delete only on ack, durability across reopen, bounds, thread safety."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from aiot_edge.spool import Spool, SpoolError
from edge_fixtures import small_disk_fixture  # noqa: F401 - registers the fixture


def test_order_preserved_and_pending_skips_inflight(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        ids = [spool.put("t/alert", f"m{i}") for i in range(5)]
        assert ids == sorted(ids)
        assert [item.payload for item in spool.pending(10)] == [f"m{i}".encode() for i in range(5)]
        assert [item.row_id for item in spool.pending(2)] == ids[:2]
        # rows handed to the client (in flight) are skipped, the rest keep their order
        assert [item.row_id for item in spool.pending(10, exclude={ids[0], ids[2]})] == [ids[1], ids[3], ids[4]]
        assert [item.row_id for item in spool.pending(2, exclude={ids[0], ids[1]})] == [ids[2], ids[3]]


def test_rows_leave_only_when_deleted(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        a = spool.put("t", b"a")
        b = spool.put("t", b"b")
        assert a is not None and b is not None
        spool.pending(10)  # reading is not acknowledging
        assert spool.depth() == 2
        assert spool.delete(b) is True
        assert spool.delete(b) is False  # a second ack of the same row is harmless
        assert [i.payload for i in spool.pending(10)] == [b"a"]
        assert spool.depth() == 1 and spool.size_bytes() == 1


def test_survives_reopen_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "spool.db"  # the parent folder is created
    with Spool(path) as spool:
        first = spool.put("aiot/s/d/alert", '{"event_id": "1"}', qos=1)
        spool.put("aiot/s/d/alert", '{"event_id": "2"}', qos=1)
        spool.delete(first)  # type: ignore[arg-type]
    with Spool(path) as spool:
        items = spool.pending(10)
        assert [i.payload for i in items] == [b'{"event_id": "2"}']
        assert items[0].topic == "aiot/s/d/alert" and items[0].qos == 1 and items[0].created > 0
        assert spool.depth() == 1
        later = spool.put("t", "3")
        assert later is not None and later > items[0].row_id  # ids are never reused: order survives restarts
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_row_bound_refuses_newest_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Spool(tmp_path / "s.db", max_rows=3) as spool:
        for i in range(3):
            assert spool.put("t", f"m{i}") is not None
        with caplog.at_level(logging.WARNING, logger="aiot_edge.spool"):
            assert spool.put("t", "m3") is None
            assert spool.put("t", "m4") is None
        assert spool.overflow == 2
        assert "spool FULL" in caplog.text and "refusing" in caplog.text
        # the oldest unsent alerts are kept
        assert [i.payload for i in spool.pending(10)] == [b"m0", b"m1", b"m2"]
        spool.delete(spool.pending(1)[0].row_id)
        assert spool.put("t", "m5") is not None  # room again after an ack


def test_byte_bound(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db", max_rows=100, max_bytes=10) as spool:
        assert spool.put("t", b"x" * 6) is not None
        assert spool.put("t", b"y" * 5) is None
        assert spool.put("t", b"z" * 4) is not None
        assert spool.size_bytes() == 10 and spool.overflow == 1


def test_concurrent_puts_and_deletes(tmp_path: Path) -> None:
    with Spool(tmp_path / "s.db") as spool:
        def writer(tag: int) -> None:
            for i in range(25):
                spool.put("t", f"{tag}-{i}")

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert spool.depth() == 100
        items = spool.pending(300)
        assert len(items) == 100
        for tag in range(4):  # each writer's rows stay in its own order
            mine = [i.payload.decode() for i in items if i.payload.decode().startswith(f"{tag}-")]
            assert mine == [f"{tag}-{i}" for i in range(25)]
        deleters = [threading.Thread(target=lambda part=part: [spool.delete(i.row_id) for i in part])
                    for part in (items[::2], items[1::2])]
        for t in deleters:
            t.start()
        for t in deleters:
            t.join()
        assert spool.depth() == 0 and spool.size_bytes() == 0


def test_unusable_path_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SpoolError, match="cannot open spool"):
        Spool(tmp_path / "a-file" / "s.db")  # its folder is a file
    with pytest.raises(ValueError, match="positive"):
        Spool(tmp_path / "x.db", max_rows=0)


def test_corrupt_spool_is_moved_aside_and_a_new_one_started(tmp_path: Path, caplog) -> None:
    # A corrupt header used to refuse to run at all; damaged pages were not noticed.
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with caplog.at_level(logging.ERROR, logger="aiot_edge.spool"), Spool(bad) as spool:
        assert spool.put("t", "new") is not None and spool.depth() == 1
    aside = list(tmp_path.glob("not-a-db.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"this is not sqlite" * 100
    assert "moved it to" in caplog.text and str(aside[0]) in caplog.text

    damaged = tmp_path / "damaged.db"
    with Spool(damaged) as spool:
        for i in range(200):
            spool.put("t", f"message {i} " * 20)
    with sqlite3.connect(damaged) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'outbox'").fetchone()[0]
        page = db.execute("PRAGMA page_size").fetchone()[0]
    with open(damaged, "r+b") as f:  # scribble over an interior page of the table's b-tree
        f.seek((root - 1) * page)
        f.write(b"\xff" * 16)  # its page header: an invalid page type
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="aiot_edge.spool"), Spool(damaged) as spool:
        assert spool.depth() == 0
    assert "failed its integrity check" in caplog.text and list(tmp_path.glob("damaged.db.corrupt-*"))


def test_lost_wal_frames_are_reported(tmp_path: Path, caplog) -> None:
    # A deleted or damaged WAL after a crash silently started with fewer rows.
    path = tmp_path / "s.db"
    script = (f"from aiot_edge.spool import Spool\ns = Spool({str(path)!r})\n"
              "for i in range(48): s.put('t', 'm%d' % i)\nimport os; os._exit(0)  # no close: WAL + shm stay\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    wal = Path(str(path) + "-wal")
    assert wal.exists() and Path(str(path) + "-shm").exists()
    with open(wal, "r+b") as f:  # damage the last frame: SQLite drops it and every one after it
        f.seek(-100, os.SEEK_END)
        f.write(b"\x00\x01" * 50)
    with caplog.at_level(logging.ERROR, logger="aiot_edge.spool"), Spool(path) as spool:
        assert spool.depth() == 47
    assert "write-ahead log" in caplog.text and "lost" in caplog.text


def test_full_disk_keeps_alerts_in_memory_and_retries(small_disk, caplog: pytest.LogCaptureFixture) -> None:
    # On a real full disk `put` raised through the daemon (traceback, exit 1). Now: keep, warn, retry.
    path = small_disk.path / "spool.db"
    with Spool(path) as spool:
        first = spool.put("t", "before")
        assert small_disk.fill() > 0
        with caplog.at_level(logging.WARNING, logger="aiot_edge.spool"):
            ids = [spool.put("t", f"full{i}") for i in range(20)]  # 20 rows of WAL frames: more than is free
        assert all(i is not None for i in ids)
        assert "disk" in caplog.text and "in memory" in caplog.text
        assert spool.depth() == 21 and spool.memory_rows > 0
        pending = spool.pending(100)
        assert [i.payload for i in pending] == [b"before"] + [f"full{i}".encode() for i in range(20)]
        assert spool.delete(pending[-1].row_id) is True  # acknowledged straight from memory
        small_disk.free()
        spool.put("t", "after")  # the disk has room again: memory rows go to disk first, in order
        assert spool.memory_rows == 0
        assert first is not None
    with Spool(path) as spool:
        assert [i.payload for i in spool.pending(100)] == (
            [b"before"] + [f"full{i}".encode() for i in range(19)] + [b"after"])


def test_malformed_rows_are_quarantined(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "s.db"
    with Spool(path) as spool:
        for i in range(4):
            spool.put("t", f"m{i}")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE outbox SET qos = 5 WHERE payload = CAST('m1' AS BLOB)")
        db.execute("UPDATE outbox SET qos = 'x' WHERE payload = CAST('m3' AS BLOB)")
    with Spool(path) as spool, caplog.at_level(logging.ERROR, logger="aiot_edge.spool"):
        assert [i.payload for i in spool.pending(10)] == [b"m0", b"m2"]
        assert spool.depth() == 2 and "quarantined" in caplog.text
        assert spool.quarantine(spool.pending(10)[1].row_id, "refused by the client library") is True
        assert [i.payload for i in spool.pending(10)] == [b"m0"] and spool.depth() == 1
    with sqlite3.connect(path) as db:
        reasons = [r[0] for r in db.execute("SELECT reason FROM quarantine ORDER BY id")]
    assert reasons[0].startswith("qos 5") and len(reasons) == 3


def test_a_deleted_wal_is_reported(tmp_path: Path, caplog) -> None:
    path = tmp_path / "s.db"
    script = (f"from aiot_edge.spool import Spool\ns = Spool({str(path)!r})\n"
              "for i in range(48): s.put('t', 'm%d' % i)\nimport os; os._exit(0)  # no close: WAL + shm stay\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    Path(str(path) + "-wal").unlink()
    with caplog.at_level(logging.ERROR, logger="aiot_edge.spool"), Spool(path) as spool:
        assert spool.depth() < 48
    assert "write-ahead log" in caplog.text and "lost data" in caplog.text
