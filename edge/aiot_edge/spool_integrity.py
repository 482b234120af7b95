"""Start-up checks of an SQLite spool file: is it intact, and did its write-ahead log lose committed rows?

SQLite itself never complains about either: a damaged page shows up only when a query reaches it,
and a write-ahead log (WAL) that was deleted or damaged after a crash is silently cut at its first
bad frame, so the spool opens with fewer rows than were committed. Two checks catch that:

- `integrity_problem(db)` runs `PRAGMA quick_check` (every page and index, without the slower
  cross-checks of `integrity_check`);
- `lost_wal_frames(path)`, before SQLite opens the file, compares the number of committed frames
  the WAL index (`<spool>-shm`, left behind by a crash) records with the frames of the WAL that
  are intact: same salt as the WAL header and a running checksum that matches (the format is in
  https://www.sqlite.org/fileformat2.html#walformat).

`move_aside(path)` renames a corrupt spool and its WAL files out of the way. The module knows
nothing about the spool's table.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from pathlib import Path

_WAL_MAGIC = (0x377F0682, 0x377F0683)  # the low bit: checksums over big-endian words
_SHM_HEADER = 48  # bytes of one copy of the WAL-index header; the shm file starts with two copies


def integrity_problem(db: sqlite3.Connection) -> str | None:
    """What `PRAGMA quick_check` reports, or None when the database is intact."""
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as err:
        return str(err)
    problems = [str(r[0]) for r in rows if r[0] != "ok"]
    return "; ".join(problems[:3]) if problems else None


def lost_wal_frames(path: str | Path) -> tuple[int, int] | None:
    """(committed frames the WAL index records, intact frames in the WAL) when intact < committed, else None."""
    shm = Path(f"{path}-shm")
    try:
        with open(shm, "rb") as f:
            head = f.read(2 * _SHM_HEADER)
    except OSError:
        return None  # a clean close removes it: nothing to compare
    if len(head) < 2 * _SHM_HEADER or head[:_SHM_HEADER] != head[_SHM_HEADER:]:
        return None  # never written, or torn: the index says nothing reliable
    is_init, max_frame = head[12], struct.unpack("=I", head[16:20])[0]  # native order, as SQLite wrote it
    if not is_init or max_frame == 0:
        return None
    intact = _intact_wal_frames(Path(f"{path}-wal"))
    return (max_frame, intact) if intact < max_frame else None


def _intact_wal_frames(wal: Path) -> int:
    try:
        data = wal.read_bytes()
    except OSError:
        return 0  # deleted
    if len(data) < 32:
        return 0
    magic, _, page_size, _, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:32])
    if magic not in _WAL_MAGIC:
        return 0
    big = bool(magic & 1)
    s = _checksum(data[:24], big, 0, 0)
    if s != (c1, c2):
        return 0
    frame = 24 + page_size
    n, off = 0, 32
    while off + frame <= len(data):
        _, _, fs1, fs2, fc1, fc2 = struct.unpack(">6I", data[off:off + 24])
        if (fs1, fs2) != (salt1, salt2):
            break  # a frame of an earlier generation of the log: the end of this one
        s = _checksum(data[off:off + 8], big, *s)
        s = _checksum(data[off + 24:off + frame], big, *s)
        if s != (fc1, fc2):
            break
        n, off = n + 1, off + frame
    return n


def _checksum(buf: bytes, big: bool, s0: int, s1: int) -> tuple[int, int]:
    """SQLite's WAL checksum over 32-bit word pairs, continued from (s0, s1)."""
    words = struct.unpack(f"{'>' if big else '<'}{len(buf) // 4}I", buf)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def move_aside(path: str | Path) -> Path:
    """Rename `path` (and its -wal / -shm files) to `<path>.corrupt-<UTC time>`; returns the new name."""
    path = Path(path)
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(f"{target}{suffix}")
    return target
