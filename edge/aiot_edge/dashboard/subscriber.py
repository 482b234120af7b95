"""The dashboard's MQTT side: subscribes to `aiot/<site>/+/{status,score,alert,ack}`, stores, fans out, acks.

`handle(topic, payload)` is the whole per-message path: parse (payloads.py), store (store.py), and
publish a live event to the pages (hub.py). A bad message is counted under its reason and dropped;
nothing a device sends can stop the subscriber (paho would end its network thread on an exception
from a callback, so `_on_message` is the one place that catches everything, logs and counts it).

`acknowledge(event_id, by)` records an operator's ack and publishes it retained, QoS 1, on
`aiot/<site>/<device>/ack` as `{event_id, ts, by}` so other dashboards see it; an ack from another
dashboard comes back in through `handle` and is stored the same way (the first ack of an event stands).

Score telemetry is `{ts, scores, window_s}`: the value charted is the device's decision scorer,
named by the message itself (`scorer`, when the daemon sends it) or learnt from the device's alerts,
else the only (or first) scorer in `scores`; its threshold likewise.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..config import BrokerAddress
from ..mqtt import build_ssl_context
from .hub import Hub
from .payloads import Ack, PayloadError, Score, parse_ack, parse_alert, parse_score, parse_status, parse_topic
from .store import Store

log = logging.getLogger(__name__)

_LOG_FIRST_BAD = 10  # log this many bad messages one by one, then a summary at most once a minute


class Subscriber:
    """Owns the paho client; counters are plain attributes read by the health endpoint."""

    def __init__(self, store: Store, hub: Hub, address: BrokerAddress, site: str = "+", *,
                 username: str | None = None, password: str | None = None, ca: str | None = None,
                 client_id: str | None = None) -> None:
        self.store, self.hub, self.address, self.site = store, hub, address, site
        self.received: collections.Counter[str] = collections.Counter()  # per kind, valid or not
        self.dropped: collections.Counter[str] = collections.Counter()  # per reason
        self.duplicates = 0
        self.connected = False
        self._stopping = False
        self._unreachable_logged = False
        self._bad_logged = 0
        self._last_summary = 0.0
        self._series: dict[tuple[str, str], dict[str, Any]] = {}  # (site, device) -> scorer, threshold
        self._described: dict[tuple[str, str], tuple[Any, ...]] = {}  # what the device's last alert told
        for d in store.devices():
            self._series[(d["site"], d["device"])] = {"scorer": d["scorer"], "threshold": d["threshold"]}
        # With a client id, the session is persistent (clean_session=False): the broker keeps the
        # subscription and queues QoS 1 alerts and acks while the dashboard is down or restarting.
        self.client = paho.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"aiot-dashboard-{uuid.uuid4().hex[:8]}",
                                  clean_session=client_id is None)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 30)
        if username is not None or password is not None:
            self.client.username_pw_set(username, password)
        if address.tls:
            self.client.tls_set_context(build_ssl_context(ca, None, None))
        self._lock = threading.Lock()  # one message at a time, whichever thread handles it

    @property
    def topics(self) -> list[str]:
        return [f"aiot/{self.site}/+/{kind}" for kind in ("status", "score", "alert", "ack")]

    def start(self) -> None:
        log.info("dashboard subscribing to %s on %s:%d", ",".join(self.topics), self.address.host, self.address.port)
        self.client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (network thread) -----------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            log.error("broker %s:%d refused the dashboard: %s", self.address.host, self.address.port, reason.getName())
            return
        client.subscribe([(topic, 1) for topic in self.topics])
        self.connected = True
        self._unreachable_logged = False
        log.info("dashboard connected to broker %s:%d", self.address.host, self.address.port)
        self.hub.publish("broker", {"connected": True})

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        if not self._unreachable_logged:  # once per outage: paho retries with backoff by itself
            self._unreachable_logged = True
            log.warning("dashboard cannot reach broker %s:%d; retrying (the page shows the stored history)",
                        self.address.host, self.address.port)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Properties | None) -> None:
        if self.connected and not self._stopping:
            log.warning("dashboard lost the broker: %s; reconnecting", reason.getName())
        self.connected = False
        self.hub.publish("broker", {"connected": False})

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            self.handle(msg.topic, msg.payload)
        except Exception:  # noqa: BLE001 -- paho would stop its network thread; one message must not
            self.dropped["internal"] += 1
            log.exception("dashboard could not handle a message on %s", msg.topic[:200])

    # -- the per-message path ----------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> bool:
        """Parse, store and fan out one message; False if it was dropped (counted in `dropped`)."""
        with self._lock:
            try:
                parts = parse_topic(topic)
                self.received[parts.kind] += 1
                if not payload and parts.kind in ("status", "ack"):
                    return False  # a retained message being cleared: nothing to show, nothing wrong
                if parts.kind == "status":
                    self._status(parts.site, parts.device, parse_status(payload))
                elif parts.kind == "score":
                    self._score(parts.site, parts.device, parse_score(payload))
                elif parts.kind == "alert":
                    self._alert(parts.site, parts.device, payload)
                else:
                    self._ack(parse_ack(payload))
                return True
            except PayloadError as err:
                self.dropped[err.reason] += 1
                self._log_bad(topic, err)
                return False

    def _status(self, site: str, device: str, status: str) -> None:
        self.store.set_status(site, device, status)
        self.hub.publish("device", self.store.device(site, device))

    def _score(self, site: str, device: str, score: Score) -> None:
        known = self._series.setdefault((site, device), {"scorer": None, "threshold": None})
        if score.scorer is not None:
            known["scorer"] = score.scorer
        if score.threshold is not None:
            known["threshold"] = score.threshold
        scorer = known["scorer"] if known["scorer"] in score.scores else sorted(score.scores)[0]
        value = score.scores[scorer]
        threshold = known["threshold"] if scorer == known["scorer"] else None
        if score.machine is not None or score.model is not None or score.scorer is not None:
            self._described.pop((site, device), None)
            self.store.describe_device(site, device, machine=score.machine, machine_id=score.machine_id,
                                       model=score.model, scorer=score.scorer, threshold=score.threshold)
        self.store.add_score(site, device, score.ts, value, threshold)
        self.hub.publish("score", {"key": f"{site}/{device}", "site": site, "device": device, "ts": score.ts,
                                   "score": value, "threshold": threshold, "scorer": scorer})

    def _alert(self, site: str, device: str, payload: bytes) -> None:
        alert = parse_alert(payload)
        if not self.store.add_alert(site, alert):
            self.duplicates += 1
            return
        self._series[(site, device)] = {"scorer": alert.scorer, "threshold": alert.threshold}
        self.hub.publish("alert", self.store.alert(alert.event_id))
        described = (alert.machine, alert.machine_id, alert.model, alert.scorer, alert.threshold)
        if self._described.get((site, device)) != described:  # a burst from one device: written once
            self._described[(site, device)] = described
            self.store.describe_device(site, device, machine=alert.machine, machine_id=alert.machine_id,
                                       model=alert.model, scorer=alert.scorer, threshold=alert.threshold)
            self.hub.publish("device", self.store.device(site, device))

    def _ack(self, ack: Ack) -> None:
        if self.store.add_ack(ack):
            self.hub.publish("ack", {"event_id": ack.event_id, "ts": ack.ts, "by": ack.by})

    def _log_bad(self, topic: str, err: PayloadError) -> None:
        self._bad_logged += 1
        now = time.monotonic()
        if self._bad_logged <= _LOG_FIRST_BAD:
            log.warning("dropped a bad message on %s: %s", topic[:200], str(err)[:300])
        elif now - self._last_summary > 60:
            self._last_summary = now
            log.warning("dropped %d bad messages so far: %s", sum(self.dropped.values()), dict(self.dropped))

    # -- operator actions (web server) -------------------------------------------------------------

    def acknowledge(self, event_id: str, by: str) -> dict[str, Any] | None:
        """Ack an alert: stored, published retained on its device's ack topic. None if the alert is unknown."""
        alert = self.store.alert(event_id)
        if alert is None:
            return None
        if alert["ack_ts"] is not None:
            return {"event_id": event_id, "ts": alert["ack_ts"], "by": alert["ack_by"]}
        ack = Ack(event_id=event_id, ts=round(time.time(), 3), by=by)
        with self._lock:
            self._ack(ack)
        body = json.dumps({"event_id": ack.event_id, "ts": ack.ts, "by": ack.by})
        info = self.client.publish(f"aiot/{alert['site']}/{alert['device']}/ack", body, qos=1, retain=True)
        # NO_CONN: paho keeps the QoS 1 message and sends it after the reconnect
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("could not publish the ack of %s: %s", event_id, paho.error_string(info.rc))
        return {"event_id": ack.event_id, "ts": ack.ts, "by": ack.by}

    def counters(self) -> dict[str, Any]:
        return {"broker_connected": self.connected, "received": dict(self.received),
                "dropped": dict(self.dropped), "duplicates": self.duplicates}
