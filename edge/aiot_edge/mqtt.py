"""MQTT publisher: drains the alert spool with QoS 1, publishes telemetry and a retained status.

Topics (ARCHITECTURE.md 4.5, a contract):

- `aiot/<site>/<device>/status`  retained `online` (re-published on every connect) / `offline`
  (the last will, and a normal publish on a clean stop);
- `aiot/<site>/<device>/score`   QoS 0 telemetry `{ts, scores, window_s}`, dropped while offline;
- `aiot/<site>/<device>/alert`   QoS 1 alerts, always taken from the spool;
- optional Home Assistant discovery configs under `homeassistant/` (retained).

Delivery: the daemon writes each alert to the `Spool` first; a pump thread here hands unsent rows
to paho (at most `max_inflight` at a time, in insertion order) and deletes a row only when its
PUBACK arrives. Right after spooling an alert the daemon's thread hands it over itself (`send_now`,
the same code under the same lock), so a fresh alert does not wait for the pump thread to be scheduled.
paho keeps in-flight QoS 1 messages across reconnects and re-sends them itself, so
a row handed to paho is not handed again by this process; after a restart every row left in the
spool is sent again (consumers de-duplicate by `event_id`).

paho runs its network loop in its own thread (`loop_start`) and connects asynchronously
(`connect_async`), so scoring never waits for the broker; reconnects back off exponentially
(`reconnect_delay_set`). paho calls `on_publish` while holding its own message lock, so that
callback only queues the acknowledged message id; the pump thread, which is the only caller of
`publish` for alerts, matches ids to rows and deletes them. Holding a lock of ours across both
would deadlock.

The password is handed to paho and never logged.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from . import __version__
from .config import BrokerAddress, EdgeConfig
from .spool import Spool

log = logging.getLogger(__name__)

STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
_AUTH_FAILURES = {"Bad user name or password", "Not authorized", "Bad username or password"}


class _PahoNoise(logging.Filter):
    """paho 2.x logs 'Client is not connected' at ERROR whenever its loop runs between reconnect
    attempts; with a broker down that is expected (and reported by us, once), not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Client is not connected")


_paho_log = logging.getLogger("aiot_edge.paho")
_paho_log.addFilter(_PahoNoise())


@dataclass(frozen=True)
class Topics:
    """The device's topics under `aiot/<site>/<device>`."""

    status: str
    score: str
    alert: str

    @classmethod
    def for_device(cls, site: str, device: str) -> Topics:
        prefix = f"aiot/{site}/{device}"
        return cls(status=f"{prefix}/status", score=f"{prefix}/score", alert=f"{prefix}/alert")


def build_ssl_context(ca: str | None, cert: str | None, key: str | None, insecure: bool = False) -> ssl.SSLContext:
    """A client TLS context: verifies the broker against `ca` (or the system store), optional client cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    # insecure skips only the hostname check; the chain is still verified against the CA.
    ctx.check_hostname = not insecure
    return ctx


def ha_discovery_messages(cfg: EdgeConfig, topics: Topics, machine: str, decision_scorer: str,
                          off_delay_s: float) -> list[tuple[str, str]]:
    """Home Assistant MQTT discovery configs: a `problem` binary_sensor fed by alerts, a score sensor.

    Alerts are events, not states, so the binary sensor turns itself off after `off_delay_s`
    without a new alert.
    """
    node = re.sub(r"[^a-zA-Z0-9_-]", "_", f"aiot_{cfg.site}_{cfg.device}")
    prefix = cfg.mqtt.ha_discovery_prefix
    device = {"identifiers": [node], "name": f"aiot-edge {cfg.device}", "manufacturer": "aiot-w2v2",
              "model": machine, "sw_version": __version__}
    availability = {"availability_topic": topics.status, "payload_available": STATUS_ONLINE,
                    "payload_not_available": STATUS_OFFLINE}
    anomaly = {"name": f"{machine} anomaly", "unique_id": f"{node}_anomaly", "state_topic": topics.alert,
               "value_template": "ON", "payload_on": "ON", "off_delay": max(1, round(off_delay_s)),
               "device_class": "problem", "json_attributes_topic": topics.alert, "device": device, **availability}
    score = {"name": f"{machine} anomaly score", "unique_id": f"{node}_score", "state_topic": topics.score,
             "value_template": "{{ value_json.scores['" + decision_scorer + "'] | round(3) }}",
             "state_class": "measurement", "device": device, **availability}
    return [(f"{prefix}/binary_sensor/{node}/anomaly/config", json.dumps(anomaly)),
            (f"{prefix}/sensor/{node}/score/config", json.dumps(score))]


def _no_delay(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho's socket callback: send each packet at once (TCP_NODELAY). With Nagle's algorithm an alert
    written right after a telemetry message waits for the broker's (delayed) ACK of it: tens of ms."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (e.g. a test double): nothing to tune
        pass


class Publisher:
    """Owns the paho client and the pump thread that moves spooled alerts to the broker.

    `start()` returns at once (the connection is made in the background); `stop()` publishes
    `offline`, disconnects and joins the threads. Use as a context manager.
    """

    def __init__(self, cfg: EdgeConfig, address: BrokerAddress, spool: Spool,
                 discovery: list[tuple[str, str]] | None = None,
                 on_state: Callable[[bool], None] | None = None) -> None:
        self.cfg = cfg
        self.address = address
        self.spool = spool
        self.topics = Topics.for_device(cfg.site, cfg.device)
        self.discovery = discovery or []
        self.on_state = on_state
        # counters (read by the daemon's health report)
        self.delivered = 0  # alerts acknowledged by the broker
        self.connects = 0
        self.connect_failures = 0
        self.telemetry_sent = 0

        self._acks: queue.SimpleQueue[tuple[int, ReasonCode]] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # paho mid -> spool row id; touched under _send_lock only
        self._send_lock = threading.Lock()  # the pump thread and send_now() hand rows to paho in turn
        self._rejected: set[int] = set()  # rows the broker refused (MQTT v5 reason code); retried after a reconnect
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._failure_streak = 0
        self._last_failure_log = 0.0
        self._diagnose = threading.Event()
        self._pump: threading.Thread | None = None
        self._network_started = False  # loop_start() was called (and loop_stop() not yet)
        self._v5 = cfg.mqtt.protocol == "5"
        self._ssl_context: ssl.SSLContext | None = None
        self.client = self._make_client()

    # -- set-up ----------------------------------------------------------------------------------

    def _make_client(self) -> paho.Client:
        cfg = self.cfg
        client_id = cfg.mqtt.client_id or f"aiot-edge-{cfg.site}-{cfg.device}"
        protocol = MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        client.enable_logger(_paho_log)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = _no_delay
        client.reconnect_delay_set(cfg.mqtt.reconnect_min_s, cfg.mqtt.reconnect_max_s)  # type: ignore[arg-type]
        client.will_set(self.topics.status, STATUS_OFFLINE, qos=1, retain=True)
        username = cfg.username
        password = cfg.resolve_password()
        if username is not None or password is not None:
            client.username_pw_set(username, password)
        if self.address.tls:
            self._ssl_context = build_ssl_context(cfg.tls.ca, cfg.tls.cert, cfg.tls.key, cfg.tls.insecure)
            client.tls_set_context(self._ssl_context)
            if cfg.tls.insecure:
                log.warning("tls.insecure is set: the broker's hostname is NOT checked")
        return client

    def _publish_properties(self) -> Properties | None:
        if not self._v5 or self.cfg.mqtt.message_expiry_s is None:
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = self.cfg.mqtt.message_expiry_s
        return props

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and start the pump; returns immediately."""
        log.info("mqtt connecting broker=%s:%d tls=%s protocol=%s user=%s", self.address.host, self.address.port,
                 self.address.tls, self.cfg.mqtt.protocol, self.cfg.username or "-")
        self.client.connect_async(self.address.host, self.address.port, keepalive=self.cfg.mqtt.keepalive_s)
        self.client.loop_start()
        self._network_started = True
        self._pump = threading.Thread(target=self._pump_loop, name="aiot-edge-pump", daemon=True)
        self._pump.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Publish `offline` (if connected), disconnect cleanly and stop the threads."""
        self._stopping.set()
        self._wake.set()
        if self._pump is not None:
            self._pump.join(timeout)
        if self._connected.is_set():
            info = self.client.publish(self.topics.status, STATUS_OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
                log.info("mqtt status=offline published")
            except (RuntimeError, ValueError) as err:
                log.warning("mqtt could not publish status=offline: %s", err)
        self.client.disconnect()
        self.client.loop_stop()
        self._drain_acks()  # acks that arrived during shutdown still delete their rows

    def __enter__(self) -> Publisher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dead_thread(self) -> str | None:
        """Which of our threads died while we were not stopping (None when both run): a fatal fault,
        since nothing would publish any more while the daemon looked healthy."""
        if self._stopping.is_set():
            return None
        # paho keeps its thread in a private attribute and sets it to None when the thread ends
        # (also when it dies at once, before we could hold a reference of our own).
        if self._network_started and getattr(self.client, "_thread", True) is None:
            return "the MQTT network thread"
        if self._pump is not None and not self._pump.is_alive():
            return "the publish pump thread"
        return None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def notify(self) -> None:
        """Tell the pump that new rows are in the spool."""
        self._wake.set()

    def send_now(self) -> None:
        """Hand unsent spool rows to paho from the calling thread (the pump does the same when it wakes)."""
        if self._connected.is_set():
            with self._send_lock:
                self._drain_acks()
                self._send_pending()

    def wait_drained(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Block until the spool is empty (every alert acknowledged), `timeout` passes or `stop` is set."""
        deadline = time.monotonic() + timeout
        while self.spool.depth() > 0:
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                return False
            self._wake.set()
            time.sleep(0.05)
        return True

    # -- publishing ------------------------------------------------------------------------------

    def publish_telemetry(self, payload: dict[str, Any]) -> bool:
        """QoS 0 score telemetry; dropped (returns False) while disconnected: it is never spooled."""
        if not self._connected.is_set():
            return False
        info = self.client.publish(self.topics.score, json.dumps(payload), qos=0,
                                   properties=self._publish_properties())
        ok = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
        self.telemetry_sent += ok
        return ok

    def _pump_loop(self) -> None:
        try:
            self._pump_forever()
        except BaseException:
            log.exception("mqtt publish pump failed")  # the daemon sees the dead thread and stops
            raise

    def _pump_forever(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            with self._send_lock:
                self._drain_acks()
            if self._diagnose.is_set():
                self._diagnose.clear()  # once per streak of failures; later ones are counted only
                log.warning("mqtt cannot reach broker %s:%d: %s; retrying with backoff up to %g s "
                            "(alerts are kept in the spool)", self.address.host, self.address.port,
                            self._probe(), self.cfg.mqtt.reconnect_max_s)
            if self._connected.is_set():
                with self._send_lock:
                    self._send_pending()

    def _send_pending(self) -> None:
        room = self.cfg.mqtt.max_inflight - len(self._inflight)
        if room <= 0:
            return
        busy = set(self._inflight.values()) | self._rejected
        for item in self.spool.pending(room, exclude=busy):
            try:
                info = self.client.publish(item.topic, item.payload, qos=item.qos,
                                           properties=self._publish_properties())
            except (ValueError, TypeError) as err:  # paho refuses the row itself (topic, payload, qos)
                self.spool.quarantine(item.row_id, f"refused by paho: {err}")
                continue
            # NO_CONN: paho queued the QoS 1 message and sends it after the reconnect; it is in flight.
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                log.warning("mqtt publish of spooled row %d failed: %s", item.row_id, paho.error_string(info.rc))
                break
            self._inflight[info.mid] = item.row_id

    def _drain_acks(self) -> None:
        while True:
            try:
                mid, reason = self._acks.get_nowait()
            except queue.Empty:
                return
            row = self._inflight.pop(mid, None)
            if row is None:
                continue  # status / discovery messages
            if reason.is_failure:
                log.error("mqtt broker refused alert row %d: %s (kept in the spool, retried after reconnect)",
                          row, reason.getName())
                self._rejected.add(row)
                continue
            if self.spool.delete(row):
                self.delivered += 1

    # -- paho callbacks (network thread) ---------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            self.connect_failures += 1
            hint = " (check username / password)" if reason.getName() in _AUTH_FAILURES else ""
            log.error("mqtt broker %s:%d refused the connection: %s%s; retrying", self.address.host,
                      self.address.port, reason.getName(), hint)
            return
        self.connects += 1
        self._failure_streak = 0
        self._rejected = set()  # rebinding, not clear(): the pump thread may be reading the old set
        log.info("mqtt connected broker=%s:%d session_present=%s spool_depth=%d", self.address.host,
                 self.address.port, getattr(flags, "session_present", None), self.spool.depth())
        client.publish(self.topics.status, STATUS_ONLINE, qos=1, retain=True)
        for topic, payload in self.discovery:
            client.publish(topic, payload, qos=1, retain=True)
        self._connected.set()
        self._wake.set()
        if self.on_state is not None:
            self.on_state(True)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self.connect_failures += 1
        self._failure_streak += 1
        if self._failure_streak == 1:
            self._diagnose.set()
        now = time.monotonic()
        if self._failure_streak > 2 and now - self._last_failure_log > 60:
            self._last_failure_log = now
            log.warning("mqtt still cannot reach broker %s:%d (%d failed attempts); spool_depth=%d",
                        self.address.host, self.address.port, self.connect_failures, self.spool.depth())
        self._wake.set()

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Properties | None) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if self._stopping.is_set():
            log.info("mqtt disconnected")
        elif was_connected:
            log.warning("mqtt connection lost: %s; reconnecting (alerts are kept in the spool)", reason.getName())
        if was_connected and self.on_state is not None:
            self.on_state(False)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties | None) -> None:
        # Runs under paho's message lock: only queue the id, the pump thread does the rest.
        self._acks.put((mid, reason))
        self._wake.set()

    # -- diagnostics -----------------------------------------------------------------------------

    def _probe(self, timeout: float = 2.0) -> str:
        """Why the broker is unreachable, in words (paho only says that it is)."""
        try:
            with socket.create_connection((self.address.host, self.address.port), timeout=timeout) as sock:
                if self._ssl_context is None:
                    return "TCP connects now; the broker may have just come up"
                with self._ssl_context.wrap_socket(sock, server_hostname=self.address.host):
                    return "TLS handshake succeeds now; the broker may have just come up"
        except ssl.SSLError as err:
            return f"TLS handshake failed: {getattr(err, 'verify_message', None) or err.reason or err}"
        except OSError as err:
            return err.strerror or str(err)
