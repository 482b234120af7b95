"""Helpers for the dashboard tests: `aiot-edge dashboard` as a child process, and its JSON API.

The dashboard runs exactly as an operator starts it (`python -m aiot_edge.cli dashboard ...`) on a
free port (`--listen 127.0.0.1:0`); its first stdout line, `dashboard: URL`, tells where. Every process
started here is stopped at teardown, also when a test fails.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiot_edge.broker import MosquittoProcess

REPO = Path(__file__).resolve().parents[1]


class DashboardProcess:
    """`aiot-edge dashboard` on a free port; `url` once it listens; stderr (its log) goes to a file."""

    def __init__(self, broker: MosquittoProcess, db: Path, log_file: Path, *extra: str, timeout: float = 30.0) -> None:
        self.log_file = log_file
        self._log = open(log_file, "wb")  # closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aiot_edge.cli", "dashboard", "--broker", f"mqtt://{broker.host}:{broker.port}",
             "--listen", "127.0.0.1:0", "--db", str(db), *extra],
            stdout=subprocess.PIPE, stderr=self._log, env=env, cwd=REPO, text=True)
        lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
        try:
            first = lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            pytest.fail(f"the dashboard did not start within {timeout} s:\n{self.log()}")
        if not first.startswith("dashboard: http://"):
            self.stop()
            pytest.fail(f"unexpected first line {first!r} from the dashboard:\n{self.log()}")
        self.url = first.split(" ", 1)[1].strip()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=10) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(self.url + path.lstrip("/"), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then the exit code (SIGKILL if it does not stop in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(name="dashboards")
def dashboards_fixture(tmp_path: Path) -> Iterator[Callable[..., DashboardProcess]]:
    made: list[DashboardProcess] = []

    def start(broker: MosquittoProcess, db: Path | None = None, *extra: str) -> DashboardProcess:
        d = DashboardProcess(broker, db or tmp_path / "dashboard.db", tmp_path / f"dashboard{len(made)}.log", *extra)
        made.append(d)
        return d

    try:
        yield start
    finally:
        for d in made:
            d.stop()
