"""The demo's edge stage: the real daemon scores some clips with a bundle, and a subscriber shows its alerts.

`run_edge_stage` starts a broker on loopback (a local mosquitto when the binary is installed, else the
edge package's embedded broker: amqtt in-process), subscribes to the device's alert topic with
paho-mqtt, then runs `aiot_edge.daemon.Daemon` in-process on the given files with `once` (stop when
the files are scored and every alert is acknowledged), and returns the alert payloads received.

With a dashboard database, `aiot-edge dashboard` runs beside the broker for the stage and shows
the alerts live (its URL is printed first).

The broker belongs to this helper, not to the daemon (`broker: embedded` would start one inside
the daemon): the subscriber has to be subscribed before the first alert, and a daemon-owned broker's
port is only known once the daemon runs and is gone as soon as a `once` daemon exits.

It knows nothing about torch; it drives the edge package exactly as `aiot-edge run` does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from aiot_edge.broker import EmbeddedBroker, MosquittoProcess, find_mosquitto
from aiot_edge.config import EdgeConfig, with_overrides
from aiot_edge.daemon import Daemon, ExitCode
from aiot_edge.mqtt import Topics
from aiot_edge.sources import FileSource
from paho.mqtt.enums import CallbackAPIVersion

SITE, DEVICE = "demo", "edge-demo"


@contextlib.contextmanager
def local_broker(workdir: Path) -> Iterator[tuple[str, str]]:
    """(url, backend) of a loopback broker for the stage: mosquitto if installed, else the embedded one."""
    if find_mosquitto() is not None:
        with MosquittoProcess(workdir / "mosquitto") as broker:
            yield f"mqtt://{broker.host}:{broker.port}", "mosquitto"
        return
    with EmbeddedBroker(workdir / "embedded") as broker:
        yield broker.url, str(broker.backend)


class _AlertSubscriber:
    """A paho client that collects the JSON payloads on one topic (QoS 1)."""

    def __init__(self, url: str, topic: str, echo: bool) -> None:
        host, port = url.removeprefix("mqtt://").rsplit(":", 1)
        self.topic, self.echo = topic, echo
        self.payloads: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"aiot-demo-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, u, f, reason, p: None if reason.is_failure else c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect_async(host, int(port))
        self.client.loop_start()

    def wait_subscribed(self, timeout: float) -> None:
        if not self._subscribed.wait(timeout):
            self.close()
            raise TimeoutError(f"could not subscribe to {self.topic} within {timeout:g} s")

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        payload = json.loads(msg.payload)
        with self._lock:
            self.payloads.append(payload)
        if self.echo:
            print(f"  alert {len(self.payloads):3d}  {payload['machine']}/{payload.get('machine_id', '?')}  "
                  f"{payload['window_start']:7.1f}-{payload['window_end']:.1f} s  score {payload['score']:.3f} > "
                  f"{payload['threshold']:.3f} ({payload['scorer']}, {payload['severity']})  "
                  f"{Path(str(payload.get('source', ''))).name}")

    def count(self) -> int:
        with self._lock:
            return len(self.payloads)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def demo_dashboard(url: str, db: Path | None, echo: bool) -> Iterator[Any]:
    """`aiot-edge dashboard` on the stage's broker (127.0.0.1:8080, or a free port if that is taken); None
    when `db` is None or the `dashboard` extra is not installed."""
    if db is None:
        yield None
        return
    try:
        from aiot_edge.dashboard import Dashboard, DashboardConfig
    except ImportError:
        print("dashboard: not started (pip install './edge[dashboard]')")
        yield None
        return
    for listen in ("127.0.0.1:8080", "127.0.0.1:0"):
        dashboard = Dashboard(DashboardConfig(broker=url, listen=listen, db=str(db), operator="demo"))
        try:
            dashboard.start()
            break
        except OSError:  # 8080 is taken: any free port will do
            continue
    if echo:
        print(f"dashboard: {dashboard.url}  (alerts kept in {db})", flush=True)
    try:
        yield dashboard
    finally:
        dashboard.stop()


def run_edge_stage(bundle: Path, wav_files: list[Path], machine: str, machine_id: str, timeout_s: float = 120,
                   *, overrides: dict[str, Any] | None = None, echo: bool = True, dashboard_db: Path | None = None,
                   keep_dashboard: bool = False) -> list[dict[str, Any]]:
    """Score `wav_files` with the edge daemon on `bundle` and return the alert payloads a subscriber received.

    `overrides` are dotted daemon-config keys (`{"decision.k": 1, "decision.cooldown_s": 0}`); the
    daemon's defaults apply otherwise. After `timeout_s` the daemon is asked to stop. With
    `dashboard_db`, the live dashboard runs beside the broker while the daemon scores (the daemon
    then also sends score telemetry for its charts); with `keep_dashboard`, broker and dashboard
    stay up after the daemon is done, until Ctrl-C.
    """
    files = [Path(f) for f in wav_files]
    if not files:
        raise ValueError("run_edge_stage needs at least one audio file")
    edge_log = logging.getLogger("aiot_edge")
    level = edge_log.level
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="aiot-edge-demo-"))
        url, backend = stack.enter_context(local_broker(Path(tmp)))
        dashboard = stack.enter_context(demo_dashboard(url, dashboard_db, echo))
        topic = Topics.for_device(SITE, DEVICE).alert
        sub = _AlertSubscriber(url, topic, echo)
        try:
            sub.wait_subscribed(10.0)
            values = {"bundle": str(bundle), "machine": machine, "machine_id": machine_id, "site": SITE,
                      "device": DEVICE, "broker": url, "once": True, "once_timeout_s": min(30.0, timeout_s),
                      "spool.path": str(Path(tmp) / "spool.db"), "health_every_s": 0.0,
                      "telemetry_every_s": 0.5 if dashboard is not None else 0.0,
                      **(overrides or {})}
            cfg = with_overrides(EdgeConfig(), values)
            daemon = Daemon(cfg, FileSource(files, sample_rate=_bundle_rate(bundle)))
            if echo:
                print(f"edge daemon: {len(files)} file(s), bundle {bundle}, machine {machine}/{machine_id}, "
                      f"broker {backend} at {url}, alerts on {topic}")
            edge_log.setLevel(logging.ERROR)  # the subscriber prints each alert; the daemon's log would repeat it
            code = _run_with_timeout(daemon, timeout_s)
            delivered = daemon.publisher.delivered if daemon.publisher is not None else 0
            deadline = time.monotonic() + 5.0  # PUBACKs came from the broker; let its forwards reach us
            while sub.count() < delivered and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            edge_log.setLevel(level)
            sub.close()
        if code != ExitCode.OK:
            raise RuntimeError(f"the edge daemon exited with code {int(code)} ({ExitCode(code).name})")
        if echo:
            print(f"edge daemon: {daemon.counters.windows_scored} windows scored, "
                  f"{daemon.counters.alerts_raised} alerts raised, {sub.count()} received")
            _explain_alerts(bundle, files, machine, machine_id, cfg, sub.count())
        if dashboard is not None:
            _wait_until_shown(dashboard, [p["event_id"] for p in sub.payloads])
            if keep_dashboard:
                _serve_until_interrupted(dashboard)
        return list(sub.payloads)


def _explain_alerts(bundle: Path, files: list[Path], machine: str, machine_id: str, cfg: EdgeConfig,
                    received: int) -> None:
    """Print per clip its windows over the threshold and the alert that covers it (demo_alerts.py): debounce
    and cooldown make one alert stand for several anomalous clips played back to back."""
    from .demo_alerts import clip_report, format_clip_report

    try:
        clips, threshold = clip_report(bundle, files, machine, machine_id, cfg.decision)
    except (ValueError, OSError) as err:  # the alerts above stand; only the explanation is missing
        print(f"(no per-clip explanation: {err})")
        return
    print("\n".join(format_clip_report(clips, threshold, cfg.decision, received)))


def _wait_until_shown(dashboard: Any, event_ids: list[str], timeout_s: float = 5.0) -> None:
    """The dashboard gets the alerts through the broker, like the subscriber: give it as long."""
    deadline = time.monotonic() + timeout_s
    while not all(dashboard.store.alert(e) for e in event_ids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _serve_until_interrupted(dashboard: Any) -> None:
    print(f"dashboard: {dashboard.url} stays up with the broker; Ctrl-C to end the demo", flush=True)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print()


def _bundle_rate(bundle: Path) -> int:
    from aiot_edge.bundle import Bundle

    return Bundle.load(bundle, verify_sha256=False).sample_rate  # the daemon verifies it when it starts


def _run_with_timeout(daemon: Daemon, timeout_s: float) -> int:
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(daemon.run()), name="aiot-edge-demo", daemon=True)
    worker.start()
    try:
        worker.join(timeout_s)
        if worker.is_alive():
            daemon.request_stop(f"timeout after {timeout_s:g} s")
            worker.join(30.0)
    except KeyboardInterrupt:
        daemon.request_stop("interrupted")
        worker.join(30.0)
        raise
    return result[0] if result else ExitCode.ERROR
