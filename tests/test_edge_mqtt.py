"""aiot_edge.mqtt + broker against a real mosquitto: payloads, retained status, reconnects, TLS, auth, v5, HA.

Daemons run in-process here (a thread, fed by the test); the process-level behaviour (signals,
SIGKILL, restarts) is in test_edge_daemon.py.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import sys
import threading
import uuid
from types import SimpleNamespace

import numpy as np
import paho.mqtt.client as paho
import pytest
from aiot_edge.broker import BrokerUnavailable, EmbeddedBroker, find_mosquitto
from aiot_edge.spool import Spool
from edge_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    LOUD,
    THRESHOLD,
    FedSource,
    brokers_fixture,
    certs_fixture,
    daemon_config,
    make_certs,
    pattern_signal,
    run_daemon_fixture,
    small_disk_fixture,
    subscribers_fixture,
    tiny_bundle_fixture,
    wait_for,
)
from paho.mqtt.enums import CallbackAPIVersion
from system_packages import missing_system_package

ALERT_FIELDS = {"event_id", "device", "machine", "ts", "score", "threshold", "scorer", "model", "severity",
                "window_start", "window_end"}


def test_alert_payload_status_and_telemetry(tmp_path, brokers, subscribers, run_daemon, tiny_bundle) -> None:
    broker = brokers().start()
    sub = subscribers(broker, topics="aiot/#")
    source = FedSource()
    d = run_daemon(daemon_config(tmp_path, broker, tiny_bundle, telemetry_every_s=0.05), source)
    wait_for(lambda: [m for m in sub.on("/status") if m.payload == b"online"], what="status online")
    # alerts are not held back by Nagle's algorithm behind a telemetry message, on either hop
    assert d.daemon.publisher.client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert "set_tcp_nodelay true" in broker.conf.read_text()

    source.feed(pattern_signal(3))
    wait_for(lambda: len(sub.alert_ids()) == 3, what="3 alerts")
    alert = sub.on("/alert")[0]
    assert alert.topic == "aiot/lab/pi1/alert" and alert.qos == 1
    body = alert.json()
    assert ALERT_FIELDS <= set(body)
    uuid.UUID(body["event_id"])
    assert body["device"] == "pi1" and body["machine"] == "fan" and body["machine_id"] == "id_00"
    assert body["scorer"] == "peak" and body["model"] == "peak-test" and body["severity"] == "warning"
    assert body["threshold"] == pytest.approx(THRESHOLD) and body["score"] == pytest.approx(LOUD, abs=1e-3)
    assert body["window_start"] == pytest.approx(0.1) and body["window_end"] == pytest.approx(0.2)
    assert [m.json()["window_start"] for m in sub.on("/alert")] == pytest.approx([0.1, 0.3, 0.5])

    telemetry = wait_for(lambda: sub.on("/score"), what="telemetry")[0]
    assert telemetry.qos == 0 and set(telemetry.json()) == {"ts", "scores", "window_s"}
    assert telemetry.json()["scores"]["peak"] == pytest.approx(LOUD, abs=1e-3)

    source.finish()
    assert d.stop() == 0
    assert d.daemon.spool is not None and d.daemon.spool.depth() == 0
    wait_for(lambda: sub.on("/status")[-1].payload == b"offline", what="status offline")
    late = subscribers(broker, topics="aiot/lab/pi1/status")  # a newcomer sees the retained status
    retained = wait_for(lambda: late.on("/status"), what="retained status")[0]
    assert retained.retain and retained.payload == b"offline"


def test_broker_down_at_start_and_restarted_mid_stream(tmp_path, brokers, subscribers, run_daemon,
                                                       tiny_bundle) -> None:
    broker = brokers(persistence=True)  # persistence keeps the subscriber's session across the restart
    source = FedSource()
    d = run_daemon(daemon_config(tmp_path, broker, tiny_bundle, once=True), source)
    wait_for(d.daemon.started.is_set, what="daemon start")

    source.feed(pattern_signal(2))  # broker down: scored, spooled, not delivered
    wait_for(lambda: d.daemon.spool.depth() == 2, what="2 spooled alerts")
    assert d.daemon.publisher.delivered == 0

    broker.start()
    sub = subscribers(broker, topics="aiot/+/+/alert", persistent=True)
    wait_for(lambda: len(sub.alert_ids()) == 2, what="spooled alerts after the broker came up")

    broker.stop()  # mid-stream outage
    source.feed(pattern_signal(3))
    wait_for(lambda: d.daemon.counters.alerts_raised == 5, what="alerts raised during the outage")
    broker.start()
    source.feed(pattern_signal(2))
    source.finish()

    assert d.join(30) == 0  # --once: exhausted and spool empty
    wait_for(lambda: len(sub.alert_ids()) == 7, timeout=15, what="all 7 alerts")
    assert len(sub.alert_ids()) == 7  # every alert arrived; duplicates (at-least-once) are allowed
    assert d.daemon.spool.depth() == 0 and d.daemon.publisher.connects >= 2


def test_tls_client_certificate_and_password(tmp_path, brokers, subscribers, run_daemon, tiny_bundle, certs,
                                             caplog) -> None:
    broker = brokers(certs=certs, require_client_cert=True, passwords={"edge": "s3cret-pw"}).start()
    sub = subscribers(broker, topics="aiot/#", tls=certs, username="edge", password="s3cret-pw")
    (tmp_path / "pw").write_text("s3cret-pw\n")
    cfg = daemon_config(tmp_path, f"mqtts://127.0.0.1:{broker.port}", tiny_bundle, tls__ca=str(certs.ca),
                        tls__cert=str(certs.client_cert), tls__key=str(certs.client_key), username="edge",
                        password_file=str(tmp_path / "pw"))
    source = FedSource()
    with caplog.at_level(logging.DEBUG):
        d = run_daemon(cfg, source)
        source.feed(pattern_signal(2))
        wait_for(lambda: len(sub.alert_ids()) == 2, what="alerts over TLS")
        assert d.daemon.publisher.client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert d.stop() == 0
    assert "s3cret-pw" not in caplog.text and "s3cret-pw" not in repr(cfg)
    assert "tls=True" in caplog.text


def test_wrong_password_is_logged_and_retried(tmp_path, brokers, run_daemon, tiny_bundle, caplog) -> None:
    broker = brokers(passwords={"edge": "right"}).start()
    cfg = daemon_config(tmp_path, broker, tiny_bundle, username="edge", password="wrong-pw")
    source = FedSource()
    with caplog.at_level(logging.INFO):
        d = run_daemon(cfg, source)
        refused = lambda: [r for r in caplog.records if "refused the connection" in r.getMessage()]  # noqa: E731
        wait_for(lambda: len(refused()) >= 2, what="two refused connection attempts")
        source.feed(pattern_signal(2))
        wait_for(lambda: d.daemon.spool.depth() == 2, what="alerts kept in the spool")
        assert d.thread.is_alive()  # still running, still retrying
        assert d.stop() == 0
    message = refused()[0].getMessage()
    assert "Not authorized" in message and "check username / password" in message
    assert "wrong-pw" not in caplog.text


def test_untrusted_broker_certificate_is_explained(tmp_path, brokers, run_daemon, tiny_bundle, certs,
                                                   caplog) -> None:
    broker = brokers(certs=certs).start()
    other = make_certs(tmp_path / "other-ca")  # a CA that did not sign the broker's certificate
    cfg = daemon_config(tmp_path, f"mqtts://127.0.0.1:{broker.port}", tiny_bundle, tls__ca=str(other.ca))
    with caplog.at_level(logging.WARNING):
        d = run_daemon(cfg, FedSource())
        wait_for(lambda: "TLS handshake failed" in caplog.text, what="TLS diagnosis")
        assert d.thread.is_alive()
        assert d.stop() == 0
    assert "self-signed certificate" in caplog.text  # the verification error, in words
    assert "Client is not connected" not in caplog.text  # paho's reconnect noise is filtered


def test_mqtt5_message_expiry_and_home_assistant_discovery(tmp_path, brokers, subscribers, run_daemon,
                                                           tiny_bundle) -> None:
    broker = brokers().start()
    sub = subscribers(broker, topics="#", v5=True)
    cfg = daemon_config(tmp_path, broker, tiny_bundle, mqtt__protocol="5", mqtt__message_expiry_s=120,
                        ha_discovery=True)
    source = FedSource()
    d = run_daemon(cfg, source)
    source.feed(pattern_signal(1))
    alert = wait_for(lambda: sub.on("/alert"), what="v5 alert")[0]
    assert 0 < alert.properties.MessageExpiryInterval <= 120
    configs = wait_for(lambda: [m for m in sub.messages if m.topic.startswith("homeassistant/")] or None,
                       what="discovery")
    by_topic = {m.topic: m.json() for m in configs}
    anomaly = by_topic["homeassistant/binary_sensor/aiot_lab_pi1/anomaly/config"]
    assert anomaly["state_topic"] == "aiot/lab/pi1/alert" and anomaly["device_class"] == "problem"
    assert anomaly["availability_topic"] == "aiot/lab/pi1/status"
    score = by_topic["homeassistant/sensor/aiot_lab_pi1/score/config"]
    assert score["state_topic"] == "aiot/lab/pi1/score" and "peak" in score["value_template"]
    assert all(m.retain or m.topic.startswith("homeassistant/") for m in configs)
    assert d.stop() == 0


def _roundtrip(port: int) -> bytes:
    got: list[bytes] = []
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2)

    def on_message(c, userdata, msg) -> None:
        got.append(msg.payload)
        done.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe("demo/t", qos=1)
        wait_for(lambda: client.publish("demo/t", b"hi", qos=1) and done.wait(0.2), timeout=10, what="roundtrip")
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def test_embedded_broker_amqtt() -> None:
    pytest.importorskip("amqtt")
    with EmbeddedBroker() as broker:
        assert broker.backend == "amqtt" and broker.url.startswith("mqtt://127.0.0.1:")
        assert _roundtrip(broker.port) == b"hi"


def test_embedded_broker_falls_back_to_mosquitto(monkeypatch, tmp_path) -> None:
    if find_mosquitto() is None:
        pytest.skip(missing_system_package("mosquitto", needed_for="a real MQTT broker"))
    monkeypatch.setitem(sys.modules, "amqtt.broker", None)  # as if amqtt were not installed
    with EmbeddedBroker(tmp_path / "fallback") as broker:
        assert broker.backend == "mosquitto"
        assert _roundtrip(broker.port) == b"hi"


def test_no_embedded_broker_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "amqtt.broker", None)
    monkeypatch.setattr("aiot_edge.broker.find_mosquitto", lambda: None)
    with pytest.raises(BrokerUnavailable, match="amqtt is not installed.*mosquitto binary is not installed"):
        EmbeddedBroker().start()


def test_daemon_with_embedded_broker(tmp_path, subscribers, run_daemon, tiny_bundle) -> None:
    source = FedSource()
    d = run_daemon(daemon_config(tmp_path, "embedded", tiny_bundle), source)
    wait_for(d.daemon.started.is_set, what="daemon start")
    port = int(d.daemon.broker_url.rsplit(":", 1)[1])
    sub = subscribers(SimpleNamespace(host="127.0.0.1", port=port), topics="aiot/#")
    source.feed(np.concatenate([pattern_signal(2)]))
    wait_for(lambda: len(sub.alert_ids()) == 2, what="alerts via the embedded broker")
    assert d.stop() == 0


def test_full_disk_keeps_scoring_and_delivers_alerts(tmp_path, small_disk, brokers, subscribers, run_daemon,
                                                     tiny_bundle, caplog) -> None:
    # A real full disk under the spool: `Spool.put` raised through the daemon (traceback, exit 1).
    broker = brokers().start()
    sub = subscribers(broker, topics="aiot/+/+/alert")
    source = FedSource()
    d = run_daemon(daemon_config(tmp_path, broker, tiny_bundle, spool__path=str(small_disk.path / "spool.db"),
                                 status_file=str(tmp_path / "status.json")), source)
    wait_for(d.daemon.started.is_set, what="daemon start")
    wait_for(lambda: d.daemon.publisher.connected, what="mqtt connected")
    small_disk.fill()
    source.feed(pattern_signal(12))
    wait_for(lambda: len(sub.alert_ids()) == 12, what="12 alerts raised on a full disk")
    assert "keeping alerts in memory" in caplog.text
    small_disk.free()
    source.feed(pattern_signal(2))
    wait_for(lambda: len(sub.alert_ids()) == 14, what="2 more alerts once the disk has room")
    source.finish()
    assert d.stop() == 0
    assert d.daemon.spool.depth() == 0 and d.daemon.counters.alerts_raised == 14


def test_malformed_spool_row_is_quarantined_and_the_rest_delivered(tmp_path, brokers, subscribers, run_daemon,
                                                                   tiny_bundle, caplog) -> None:
    # One row with qos 5 killed the publish pump, then the main thread.
    broker = brokers().start()
    sub = subscribers(broker, topics="aiot/+/+/alert")
    spool_path = tmp_path / "spool.db"
    with Spool(spool_path) as spool:
        for i in range(3):
            spool.put("aiot/lab/pi1/alert", json.dumps({"event_id": f"e{i}"}), qos=1)
    with sqlite3.connect(spool_path) as db:
        db.execute("UPDATE outbox SET qos = 5 WHERE CAST(payload AS TEXT) LIKE '%e1%'")
    source = FedSource()
    source.finish()
    d = run_daemon(daemon_config(tmp_path, broker, tiny_bundle, spool__path=str(spool_path), once=True), source)
    assert d.join(20) == 0
    wait_for(lambda: sub.alert_ids() == {"e0", "e2"}, what="the two good rows")
    assert "quarantined" in caplog.text and "qos 5" in caplog.text
    with sqlite3.connect(spool_path) as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] == 1
