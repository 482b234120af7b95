"""The dashboard against a real mosquitto and a real daemon (`aiot-edge run --once` on a few clips), as processes.

Its API must show the device, its scores and every alert the daemon published (checked against a
plain MQTT subscriber), keep them across a restart, publish acks retained, and survive garbage.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from edge_dashboard_fixtures import dashboards_fixture  # noqa: F401 - registers the fixture
from edge_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    LOUD,
    brokers_fixture,
    daemons_fixture,
    edge_config,
    pattern_signal,
    subscribers_fixture,
    tiny_bundle_fixture,
    wait_for,
    write_wav,
)


def _clips(folder: Path) -> list[Path]:
    """Three clips with 2, 3 and 1 loud windows: 6 alerts with the tests' k=n=1 config."""
    folder.mkdir()
    return [write_wav(folder / f"clip{i}.wav", pattern_signal(n)) for i, n in enumerate((2, 3, 1))]


def test_dashboard_shows_device_scores_and_every_alert_of_a_real_daemon(tmp_path, brokers, subscribers, daemons,
                                                                        dashboards, tiny_bundle):
    broker = brokers().start()
    dash = dashboards(broker)
    sub = subscribers(broker, topics="aiot/+/+/alert")
    clips = _clips(tmp_path / "clips")
    config = edge_config(tmp_path / "edge.yaml", bundle=str(tiny_bundle), broker=f"mqtt://127.0.0.1:{broker.port}",
                         spool={"path": str(tmp_path / "spool.db")}, telemetry_every_s=0.01)
    d = daemons("--config", str(config), "--source", f"file:{tmp_path / 'clips' / '*.wav'}", "--once")
    assert d.wait(60) == 0, d.log()
    wait_for(lambda: len(sub.alert_ids()) == 6, what="6 alerts at the plain subscriber")
    published = sub.alert_ids()

    wait_for(lambda: {a["event_id"] for a in dash.get("/api/alerts")} == published, what="every alert in the API")
    alerts = dash.get("/api/alerts")
    assert len(alerts) == 6
    assert [a["ts"] for a in alerts] == sorted((a["ts"] for a in alerts), reverse=True)  # newest first
    assert {Path(a["source"]).name for a in alerts} == {p.name for p in clips}
    for a in alerts:
        assert (a["site"], a["device"], a["machine"], a["machine_id"], a["scorer"]) == ("lab", "pi1", "fan", "id_00",
                                                                                       "peak")
        assert a["score"] > a["threshold"] and a["severity"] in ("warning", "critical") and a["ack_ts"] is None
        assert a["window_end"] > a["window_start"]

    # the daemon stopped cleanly: its last message is the retained `offline`, after every score and alert
    wait_for(lambda: [d for d in dash.get("/api/state")["devices"] if d["status"] == "offline"],
             what="the device offline")
    state = dash.get("/api/state")
    (device,) = state["devices"]
    assert (device["site"], device["device"], device["status"]) == ("lab", "pi1", "offline")
    assert (device["machine"], device["machine_id"], device["model"], device["threshold"]) == ("fan", "id_00",
                                                                                               "peak-test", 0.7)
    # telemetry is QoS 0 and dropped while the daemon is not yet connected (it may score these short
    # clips before its connection is up): every score it did send arrives, no more, no less (the
    # snapshot's chart keeps each 5 s bucket's peak, so it may hold fewer points)
    sent = telemetry_sent(d.log())
    health = dash.get("/api/health")
    assert health["received"].get("score", 0) == sent
    assert (device["last_score"] is not None) == (sent > 0) == bool(state["series"].get("lab/pi1"))
    assert health["received"]["alert"] == 6 and health["dropped"] == {} and health["alerts_stored"] == 6


def test_dashboard_charts_every_score_of_a_live_daemon(tmp_path, brokers, daemons, dashboards, tiny_bundle):
    broker = brokers().start()
    dash = dashboards(broker)
    config = edge_config(tmp_path / "edge.yaml", bundle=str(tiny_bundle), broker=f"mqtt://127.0.0.1:{broker.port}",
                         spool={"path": str(tmp_path / "spool.db")}, telemetry_every_s=0.05)
    d = daemons("--config", str(config), "--source", "stdin", "--once", stdin=subprocess.PIPE)
    wait_for(lambda: [x for x in dash.get("/api/state")["devices"] if x["status"] == "online"], what="online")
    # connected before it scores: the audio goes in in pieces, so telemetry goes out between them
    for n_loud in (1, 2, 1):
        d.proc.stdin.write((pattern_signal(n_loud) * 32767).astype("<i2").tobytes())
        d.proc.stdin.flush()
        time.sleep(0.2)
    d.proc.stdin.close()
    assert d.wait(60) == 0, d.log()
    sent = telemetry_sent(d.log())
    assert sent >= 1
    wait_for(lambda: [x for x in dash.get("/api/state")["devices"] if x["status"] == "offline"], what="offline")
    assert dash.get("/api/health")["received"]["score"] == sent
    state = dash.get("/api/state")
    points = state["series"]["lab/pi1"]
    assert 1 <= len(points) <= sent and [p[0] for p in points] == sorted(p[0] for p in points)
    assert max(p[1] for p in points) == pytest.approx(LOUD, abs=1e-3)  # the loud windows' peak, as scored
    # the series is charted against the threshold the device's alerts told (telemetry does not carry it)
    assert state["devices"][0]["threshold"] == 0.7 and len(state["alerts"]) == 4


def telemetry_sent(daemon_log: str) -> int:
    """The daemon's own count of score messages published, from its final counters line."""
    found = re.findall(r"final counters .*?telemetry_sent=(\d+)", daemon_log)
    assert found, daemon_log
    return int(found[-1])


def test_alerts_and_acks_survive_a_restart_and_acks_are_published_retained(tmp_path, brokers, subscribers, daemons,
                                                                            dashboards, tiny_bundle):
    broker = brokers().start()
    db = tmp_path / "dashboard.db"
    first = dashboards(broker, db)
    write_wav(tmp_path / "loud.wav", pattern_signal(2))
    config = edge_config(tmp_path / "edge.yaml", bundle=str(tiny_bundle), broker=f"mqtt://127.0.0.1:{broker.port}",
                         spool={"path": str(tmp_path / "spool.db")})
    assert daemons("--config", str(config), "--source", f"file:{tmp_path / 'loud.wav'}", "--once").wait(60) == 0
    wait_for(lambda: len(first.get("/api/alerts")) == 2, what="2 alerts")
    event_id = first.get("/api/alerts")[0]["event_id"]
    ack = first.post("/api/ack", {"event_id": event_id})
    assert ack["event_id"] == event_id and ack["by"]

    late = subscribers(broker, topics="aiot/lab/pi1/ack")  # joins after the ack: gets it because it is retained
    wait_for(lambda: late.on("/ack"), what="the retained ack")
    (msg,) = late.on("/ack")
    assert msg.retain and msg.json() == ack
    assert first.stop() == 0, first.log()

    # an alert raised while the dashboard is down: the broker queues it in the dashboard's session
    write_wav(tmp_path / "later.wav", pattern_signal(1))
    assert daemons("--config", str(config), "--source", f"file:{tmp_path / 'later.wav'}", "--once").wait(60) == 0
    second = dashboards(broker, db)
    wait_for(lambda: len(second.get("/api/alerts")) == 3, what="the 2 stored alerts and the one raised meanwhile")
    alerts = second.get("/api/alerts")
    assert Path(alerts[0]["source"]).name == "later.wav"
    acked = {a["event_id"]: a["ack_by"] for a in alerts if a["ack_ts"] is not None}
    assert acked == {event_id: ack["by"]}
    # re-acknowledging returns the stored ack instead of a second one
    assert second.post("/api/ack", {"event_id": event_id}) == ack


def test_garbage_over_mqtt_is_counted_and_the_subscriber_keeps_going(tmp_path, brokers, subscribers, dashboards):
    broker = brokers().start()
    dash = dashboards(broker)
    pub = subscribers(broker, topics="nothing/here")  # a connected client to publish with
    good = {"event_id": "after-garbage", "device": "pi9", "machine": "fan", "ts": 1.0e9, "score": 2.0,
            "threshold": 1.0, "scorer": "peak", "model": "m", "severity": "critical", "window_start": 0.0,
            "window_end": 2.0}
    garbage = [b"not json", b"\x00" * 100_000, json.dumps({**good, "score": "high"}).encode(),
               json.dumps({"event_id": "x"}).encode(), b"[1,2,3]", b"\xff\xfe"]
    for payload in garbage:
        pub.client.publish("aiot/lab/pi9/alert", payload, qos=1).wait_for_publish(5)
    pub.client.publish("aiot/lab/pi9/score", b'{"ts": 1, "scores": "x"}', qos=1).wait_for_publish(5)
    pub.client.publish("aiot/lab/pi9/status", b"sleeping", qos=1).wait_for_publish(5)
    pub.client.publish("aiot/lab/pi9/alert", json.dumps(good), qos=1).wait_for_publish(5)
    wait_for(lambda: [a for a in dash.get("/api/alerts") if a["event_id"] == "after-garbage"],
             what="the good alert after the garbage")
    health = dash.get("/api/health")
    assert sum(health["dropped"].values()) == len(garbage) + 2, health
    assert health["received"] == {"alert": len(garbage) + 1, "score": 1, "status": 1}
    assert "Traceback" not in dash.log()


def test_demo_edge_stage_shows_its_alerts_on_the_dashboard(tmp_path, tiny_bundle, capsys):
    from aiot_edge.dashboard.store import Store

    from aiot_w2v2.edge_demo import run_edge_stage

    db = tmp_path / "demo_dashboard.db"
    alerts = run_edge_stage(tiny_bundle, _clips(tmp_path / "clips"), "fan", "id_00", timeout_s=60, dashboard_db=db,
                            overrides={"decision.k": 1, "decision.n": 1, "decision.cooldown_s": 0.0})
    assert len(alerts) == 6
    printed = capsys.readouterr().out
    assert "dashboard: http://127.0.0.1:" in printed
    with Store(db) as store:  # the stage returned: the dashboard is stopped, its history stays
        assert {a["event_id"] for a in store.alerts()} == {a["event_id"] for a in alerts}
        assert store.devices()[0]["device"] == "edge-demo"
