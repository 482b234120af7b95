"""Daemon health: counters, a periodic report (log line + optional JSON status file), systemd notify.

`sd_notify` speaks systemd's notification protocol with a plain datagram on `$NOTIFY_SOCKET`
(READY=1, WATCHDOG=1, STOPPING=1, STATUS=...), so there is no dependency on python-systemd; without
the variable every call is a no-op. `Watchdog` pings at half the interval systemd asks for
(`$WATCHDOG_USEC`); the daemon calls it from its main loop, so a hung loop stops the pings and
systemd restarts the service.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Counters:
    """What the daemon has done since it started."""

    windows_scored: int = 0
    windows_failed: int = 0  # windows that could not be scored or scored NaN / Inf (never alert)
    alerts_raised: int = 0
    alerts_delivered: int = 0
    spool_depth: int = 0
    spool_overflow: int = 0  # alerts refused because the spool was full
    spool_in_memory: int = 0  # alerts waiting in memory because the disk refused them (disk full)
    files_failed: int = 0
    telemetry_sent: int = 0
    mqtt_connected: bool = False
    mqtt_connects: int = 0
    mqtt_connect_failures: int = 0


def sd_notify(message: str) -> bool:
    """Send `message` to systemd if it is listening; returns whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as err:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), err)
        return False
    return True


class Watchdog:
    """Pings systemd's watchdog at half its interval; a no-op when the service has no WatchdogSec."""

    def __init__(self, enabled: bool = True) -> None:
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        self.interval = int(usec) / 2e6 if enabled and usec.isdigit() and ours and os.environ.get("NOTIFY_SOCKET") \
            else None
        self._last = 0.0

    def ping(self) -> None:
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            sd_notify("WATCHDOG=1")


def write_status(path: str | os.PathLike[str], counters: Counters, **extra: object) -> None:
    """Write the counters as JSON, atomically (a reader never sees half a file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = {"updated": time.time(), **asdict(counters), **extra}
    fd, tmp = tempfile.mkstemp(prefix=".status-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, target)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        log.warning("cannot write status file %s: %s", target, err)
