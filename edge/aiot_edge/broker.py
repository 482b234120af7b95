"""An embedded MQTT broker for demos (`broker: embedded`), bound to 127.0.0.1 on a free port.

Two backends, tried in this order:

1. `amqtt` (pure Python, `pip install "aiot-w2v2-edge[embedded]"`), run in-process on its own
   asyncio loop in a background thread, so the daemon needs nothing outside Python;
2. a `mosquitto` subprocess with a generated config, when amqtt is not installed or fails to start
   and the `mosquitto` binary exists (Debian/Raspberry Pi OS: `apt install mosquitto`).

Neither is found: `BrokerUnavailable` with both reasons. An embedded broker lives exactly as long as
the daemon, listens on loopback only and allows anonymous clients: it is for demos and tests, never
for a site's real broker. `MosquittoProcess` is also what the test suite uses to run a real broker.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class BrokerUnavailable(RuntimeError):
    """No embedded broker could be started."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Poll until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def find_mosquitto() -> str | None:
    """The mosquitto binary: on PATH, or in /usr/sbin where Debian puts it (not on a normal user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


class MosquittoProcess:
    """A `mosquitto -c <generated conf>` child process on a fixed loopback port; can stop and restart.

    `extra_config` is appended to the generated listener config (TLS, password file, persistence).
    """

    def __init__(self, workdir: str | os.PathLike[str], port: int | None = None, extra_config: str = "",
                 listener_options: str = "", binary: str | None = None) -> None:
        self.binary = binary or find_mosquitto()
        if self.binary is None:
            raise BrokerUnavailable("the mosquitto binary is not installed (apt install mosquitto)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = LOOPBACK
        self.port = port or free_port()
        self.conf = self.workdir / "mosquitto.conf"
        self.log_file = self.workdir / "mosquitto.log"
        self.conf.write_text(
            # `user`: mosquitto started as root would switch to the "mosquitto" user and lose access
            # to this folder; naming the current user keeps it (ignored when not root).
            f"user {getpass.getuser()}\n"
            f"listener {self.port} {self.host}\n{listener_options}"
            f"log_dest file {self.log_file}\nlog_type all\nconnection_messages true\nset_tcp_nodelay true\n"
            f"{extra_config}\n" + ("" if "allow_anonymous" in extra_config else "allow_anonymous true\n"),
            encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> MosquittoProcess:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log_tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
                raise BrokerUnavailable(f"mosquitto exited with code {self.proc.returncode}: {err}{log_tail}")
            if wait_for_port(self.host, self.port, 0.1):
                log.info("mosquitto started on %s:%d (pid %d)", self.host, self.port, self.proc.pid)
                return self
        self.stop()
        raise BrokerUnavailable(f"mosquitto did not accept connections on {self.host}:{self.port} in {timeout} s")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (mosquitto saves its persistence file), then SIGKILL if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def restart(self) -> MosquittoProcess:
        self.stop()
        return self.start()

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class _AmqttBroker:
    """amqtt's Broker on a private asyncio loop in a daemon thread."""

    def __init__(self, port: int) -> None:
        from amqtt.broker import Broker  # optional dependency: ImportError is handled by the caller

        self.port = port
        self._broker_cls = Broker
        self._loop = asyncio.new_event_loop()
        self._broker: Any = None
        self._thread = threading.Thread(target=self._run, name="aiot-edge-amqtt", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }

        async def start() -> None:
            self._broker = self._broker_cls(config, loop=self._loop)
            await self._broker.start()

        try:
            self._loop.run_until_complete(start())
        except Exception as err:  # any start failure (config, bind, plugin) falls back to mosquitto
            self._error = err
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        self._loop.run_forever()
        # stopped: cancel what amqtt left running, so nothing complains about a closed loop later
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        if not self._started.wait(timeout):
            raise BrokerUnavailable(f"amqtt did not start within {timeout} s")
        if self._error is not None:
            raise BrokerUnavailable(f"amqtt failed to start: {self._error}") from self._error

    def stop(self, timeout: float = 5.0) -> None:
        if self._broker is not None and self._loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            try:
                future.result(timeout)
            except (TimeoutError, RuntimeError) as err:
                log.warning("amqtt shutdown: %s", err)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)


class EmbeddedBroker:
    """Start amqtt in-process, else a mosquitto subprocess; `url` is where clients connect.

    Use as a context manager: the broker stops when the daemon does.
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None) -> None:
        self.workdir = workdir
        self.backend: str | None = None  # "amqtt" or "mosquitto"
        self.port = 0
        self._amqtt: _AmqttBroker | None = None
        self._mosquitto: MosquittoProcess | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def start(self) -> EmbeddedBroker:
        reasons = []
        try:
            self._amqtt = _AmqttBroker(free_port())
            self._amqtt.start()
            self.backend, self.port = "amqtt", self._amqtt.port
        except ImportError:
            self._amqtt = None
            reasons.append('amqtt is not installed (pip install "aiot-w2v2-edge[embedded]")')
        except BrokerUnavailable as err:
            self._amqtt = None
            reasons.append(str(err))
        if self.backend is None:
            try:
                if self.workdir is None:
                    self._tmp = tempfile.TemporaryDirectory(prefix="aiot-edge-broker-")
                self._mosquitto = MosquittoProcess(self.workdir or self._tmp.name).start()  # type: ignore[union-attr]
                self.backend, self.port = "mosquitto", self._mosquitto.port
            except BrokerUnavailable as err:
                reasons.append(str(err))
                self.stop()
                raise BrokerUnavailable("no embedded MQTT broker: " + "; ".join(reasons)) from None
        log.info("embedded broker backend=%s url=%s (loopback only, anonymous: for demos)", self.backend, self.url)
        return self

    def stop(self) -> None:
        if self._amqtt is not None:
            self._amqtt.stop()
            self._amqtt = None
        if self._mosquitto is not None:
            self._mosquitto.stop()
            self._mosquitto = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
