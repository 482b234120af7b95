"""`Dashboard`: the store, the MQTT subscriber and the web server (uvicorn) wired together, started and stopped.

`start()` opens the SQLite file, connects to the broker in the background (the page works, from
the stored history, while the broker is unreachable) and serves HTTP from a thread; it returns
the page's URL once the server listens. `run()` does the same and blocks until SIGINT / SIGTERM
(the command line). The listening socket is bound here, so port 0 picks a free port and `url`
tells which.

The MQTT session is persistent and named after the host and the database file, so the broker
queues QoS 1 alerts and acks while the dashboard is down (up to the broker's `max_queued_messages`,
1,000 by default in mosquitto) and a restarted dashboard gets them.

A non-loopback `listen` address needs a token: the page shows plant alerts and lets anyone who
reaches it acknowledge them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from ..config import ConfigError, parse_broker_url
from .hub import Hub
from .server import build_app
from .store import Store
from .subscriber import Subscriber

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DashboardConfig:
    """What `aiot-edge dashboard` takes on its command line."""

    broker: str = "mqtt://localhost:1883"
    site: str = "+"  # one site, or every site
    listen: str = "127.0.0.1:8080"
    db: str = "aiot-dashboard.db"
    token: str | None = None  # required for a non-loopback listen address
    username: str | None = None  # MQTT user
    password: str | None = None  # MQTT password (from a file or the environment, never a flag)
    ca: str | None = None  # CA for mqtts://
    operator: str = socket.gethostname()  # recorded as the ack's `by` (with the basic-auth user, if any)
    max_alerts: int = 10_000


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (loopback) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Dashboard:
    """One dashboard process' worth of parts. Use `start()`/`stop()` (or a `with` block), or `run()`."""

    def __init__(self, cfg: DashboardConfig) -> None:
        self.cfg = cfg
        self.host, self.port = parse_listen(cfg.listen)
        if not is_loopback(self.host) and not cfg.token:
            raise ConfigError(f"--listen {cfg.listen} is reachable from other machines: give a token "
                              "(--token-file or AIOT_DASHBOARD_TOKEN), or listen on 127.0.0.1")
        if "/" in cfg.site or "#" in cfg.site or not cfg.site:
            raise ConfigError(f"--site must be one topic level (or +), got {cfg.site!r}")
        self.address = parse_broker_url(cfg.broker)
        self.store: Store | None = None
        self.subscriber: Subscriber | None = None
        self.hub = Hub()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def client_id(self) -> str:
        """One MQTT session per database: a restarted dashboard resumes it and gets the alerts it missed."""
        digest = hashlib.sha256(str(Path(self.cfg.db).resolve()).encode()).hexdigest()[:10]
        return f"aiot-dashboard-{socket.gethostname()[:32]}-{digest}"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, timeout: float = 10.0) -> str:
        """Open the store, start the subscriber and the web server; returns the page URL."""
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()  # a taken port, an unwritable database: release what was opened
            raise

    def _start(self, timeout: float) -> str:
        self.store = Store(self.cfg.db, max_alerts=self.cfg.max_alerts)
        self.subscriber = Subscriber(self.store, self.hub, self.address, self.cfg.site, username=self.cfg.username,
                                     password=self.cfg.password, ca=self.cfg.ca, client_id=self.client_id)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self._socket = socket.create_server((self.host, self.port), family=family)
        self.port = self._socket.getsockname()[1]
        app = build_app(self.store, self.hub, self.subscriber, operator=self.cfg.operator, token=self.cfg.token)
        # our logging, no access log; open SSE streams are cut 1 s into a shutdown
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1,
                                timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="aiot-dashboard-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard's web server did not start on {self.cfg.listen}")
            time.sleep(0.02)
        self.subscriber.start()
        log.info("dashboard at %s (database %s, %d alerts stored)", self.url, Path(self.cfg.db).resolve(),
                 self.store.count_alerts())
        return self.url

    def stop(self) -> None:
        if self.subscriber is not None:
            self.subscriber.stop()
        self.hub.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._socket is not None:
            self._socket.close()
        if self.store is not None:
            self.store.close()
            self.store = None

    def __enter__(self) -> Dashboard:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run(self) -> int:
        """Start, print the URL, serve until SIGINT / SIGTERM, stop. Returns an exit code."""
        done = threading.Event()
        previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            url = self.start()
            print(f"dashboard: {url}", flush=True)
            while not done.wait(0.5):
                if self._thread is not None and not self._thread.is_alive():
                    log.error("the dashboard's web server stopped")
                    return 1
            return 0
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
