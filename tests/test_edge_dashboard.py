"""Dashboard units: payload checks, the SQLite store (de-duplication, acks, bounds, restart), the per-message
path with bad payloads counted and dropped, and the web server's guards (token, loopback, cross-origin acks)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiot_edge.config import ConfigError, parse_broker_url
from aiot_edge.dashboard import Dashboard, DashboardConfig
from aiot_edge.dashboard.hub import Hub
from aiot_edge.dashboard.payloads import (
    MAX_PAYLOAD_BYTES,
    PayloadError,
    parse_ack,
    parse_alert,
    parse_score,
    parse_status,
    parse_topic,
)
from aiot_edge.dashboard.runner import is_loopback, parse_listen
from aiot_edge.dashboard.store import Store
from aiot_edge.dashboard.subscriber import Subscriber


def alert(event_id: str = "e1", **changes: Any) -> dict[str, Any]:
    base = {"event_id": event_id, "device": "pi1", "machine": "fan", "ts": 1000.0, "score": 0.9, "threshold": 0.7,
            "scorer": "peak", "model": "peak-test", "severity": "warning", "window_start": 1.0, "window_end": 1.1,
            "machine_id": "id_00", "site": "lab", "source": "/data/clip.wav"}
    return {**base, **changes}


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# -- payloads ---------------------------------------------------------------------------------------


def test_topic_parts_and_bad_topics():
    parts = parse_topic("aiot/plant1/pi-07/alert")
    assert (parts.site, parts.device, parts.kind) == ("plant1", "pi-07", "alert")
    for topic in ("aiot/plant1/pi-07/health", "aiot/plant1/alert", "other/a/b/alert", "aiot//pi/alert",
                  "aiot/a/b/c/alert"):
        with pytest.raises(PayloadError) as err:
            parse_topic(topic)
        assert err.value.reason == "topic"


def test_alert_payload_parsed_with_its_optional_fields():
    a = parse_alert(raw(alert()))
    assert (a.event_id, a.machine, a.machine_id, a.source, a.score, a.severity) == (
        "e1", "fan", "id_00", "/data/clip.wav", 0.9, "warning")
    a = parse_alert(raw({k: v for k, v in alert().items() if k not in ("machine_id", "source", "site")}))
    assert a.machine_id is None and a.source is None


@pytest.mark.parametrize(("payload", "reason"), [
    (b"not json", "not_json"),
    (b"\xff\xfe", "not_utf8"),
    (b"[1, 2]", "not_object"),
    (b"[" * 100_000 + b"]" * 100_000, "too_big"),
    (b"[" * 20_000 + b"]" * 20_000, "not_json"),  # nested deeper than json's recursion limit
    (raw({k: v for k, v in alert().items() if k != "event_id"}), "missing_field"),
    (raw({k: v for k, v in alert().items() if k != "threshold"}), "missing_field"),
    (raw(alert(score="high")), "wrong_type"),
    (raw(alert(score=True)), "wrong_type"),
    (raw(alert(device=["pi1"])), "wrong_type"),
    (raw(alert(event_id="")), "wrong_type"),
    (raw(alert(event_id="x" * 200)), "wrong_type"),
    (raw(alert(score=float("nan"))), "wrong_type"),  # json.dumps writes NaN, as a careless sender would
])
def test_bad_alert_payloads_have_a_reason(payload: bytes, reason: str):
    with pytest.raises(PayloadError) as err:
        parse_alert(payload)
    assert err.value.reason == reason


def test_score_status_and_ack_payloads():
    s = parse_score(raw({"ts": 5.0, "scores": {"peak": 0.4, "knn": 2}, "window_s": 10.0}))
    assert s.scores == {"peak": 0.4, "knn": 2.0} and s.window_s == 10.0 and s.scorer is None
    s = parse_score(raw({"ts": 5, "scores": {"peak": 0.4}, "scorer": "peak", "threshold": 0.7, "machine": "fan"}))
    assert (s.scorer, s.threshold, s.machine) == ("peak", 0.7, "fan")
    for bad in ({"ts": 5}, {"ts": 5, "scores": {}}, {"ts": 5, "scores": [1]}, {"ts": 5, "scores": {"a": "x"}},
                {"scores": {"a": 1}}, {"ts": "now", "scores": {"a": 1}}):
        with pytest.raises(PayloadError):
            parse_score(raw(bad))
    assert parse_status(b"online") == "online" and parse_status(b"offline\n") == "offline"
    with pytest.raises(PayloadError):
        parse_status(b"maybe")
    ack = parse_ack(raw({"event_id": "e1", "ts": 7.5, "by": "ops"}))
    assert (ack.event_id, ack.ts, ack.by) == ("e1", 7.5, "ops")
    with pytest.raises(PayloadError):
        parse_ack(raw({"event_id": "e1", "ts": 7.5}))


def test_long_strings_are_capped():
    a = parse_alert(raw(alert(source="x" * 5000)))
    assert a.source is not None and len(a.source) == 512
    assert len(raw(alert(source="x" * (MAX_PAYLOAD_BYTES - 500)))) <= MAX_PAYLOAD_BYTES


# -- store ------------------------------------------------------------------------------------------


def test_store_deduplicates_alerts_and_keeps_them_across_restarts(tmp_path: Path):
    db = tmp_path / "dash.db"
    with Store(db) as store:
        assert store.add_alert("lab", parse_alert(raw(alert("e1", ts=1.0))))
        assert not store.add_alert("lab", parse_alert(raw(alert("e1", ts=1.0))))  # re-delivery
        assert store.add_alert("lab", parse_alert(raw(alert("e2", ts=2.0))))
        assert [a["event_id"] for a in store.alerts()] == ["e2", "e1"]  # newest first
    with Store(db) as store:  # a restarted dashboard
        assert [a["event_id"] for a in store.alerts()] == ["e2", "e1"]
        assert store.count_alerts() == 2
        assert not store.add_alert("lab", parse_alert(raw(alert("e2", ts=2.0))))


def test_store_acks_apply_whichever_comes_first(tmp_path: Path):
    with Store(tmp_path / "dash.db") as store:
        assert store.add_ack(parse_ack(raw({"event_id": "early", "ts": 3.0, "by": "other-dashboard"})))
        store.add_alert("lab", parse_alert(raw(alert("early"))))
        store.add_alert("lab", parse_alert(raw(alert("late"))))
        assert store.add_ack(parse_ack(raw({"event_id": "late", "ts": 4.0, "by": "me"})))
        assert not store.add_ack(parse_ack(raw({"event_id": "late", "ts": 9.0, "by": "someone else"})))
        acks = {a["event_id"]: (a["ack_ts"], a["ack_by"]) for a in store.alerts()}
        assert acks == {"early": (3.0, "other-dashboard"), "late": (4.0, "me")}


def test_store_is_bounded(tmp_path: Path):
    with Store(tmp_path / "dash.db", max_alerts=5, history_s=100.0) as store:
        for i in range(12):
            store.add_alert("lab", parse_alert(raw(alert(f"e{i}", ts=float(i)))))
        assert store.count_alerts() == 5
        assert [a["event_id"] for a in store.alerts()] == ["e11", "e10", "e9", "e8", "e7"]
    with Store(tmp_path / "dash.db", max_alerts=5) as store:
        assert store.count_alerts() == 5


# -- the per-message path ---------------------------------------------------------------------------


@pytest.fixture(name="sub")
def sub_fixture(tmp_path: Path) -> Iterator[Subscriber]:
    store = Store(tmp_path / "dash.db")
    yield Subscriber(store, Hub(), parse_broker_url("mqtt://127.0.0.1:1"), "+")  # never started: no broker needed
    store.close()


def test_subscriber_stores_devices_scores_and_alerts(sub: Subscriber):
    assert sub.handle("aiot/lab/pi1/status", b"online")
    assert sub.handle("aiot/lab/pi1/score", raw({"ts": 100.0, "scores": {"peak": 0.3}, "window_s": 1.0}))
    assert sub.handle("aiot/lab/pi1/alert", raw(alert(ts=101.0)))
    assert sub.handle("aiot/lab/pi1/alert", raw(alert(ts=101.0)))  # a duplicate is valid, stored once
    assert sub.handle("aiot/lab/pi1/score", raw({"ts": 102.0, "scores": {"knn": 5.0, "peak": 0.5}}))
    device = sub.store.device("lab", "pi1")
    assert device is not None
    assert (device["status"], device["machine"], device["model"], device["scorer"], device["last_score"]) == (
        "online", "fan", "peak-test", "peak", 0.5)
    # the first score had no known scorer and one column; the second is charted as the alert's scorer
    series = sub.store.series(since=0, max_points=10**12)["lab/pi1"]  # ts from 1970: no thinning
    assert series == [[100.0, 0.3, None], [102.0, 0.5, 0.7]]
    assert sub.duplicates == 1 and sub.store.count_alerts() == 1


def test_bad_payloads_are_counted_and_dropped(sub: Subscriber):
    bad = [
        ("aiot/lab/pi1/alert", b"not json"), ("aiot/lab/pi1/alert", b"\x00" * (MAX_PAYLOAD_BYTES + 1)),
        ("aiot/lab/pi1/alert", raw({"event_id": "x"})), ("aiot/lab/pi1/alert", raw(alert(score="high"))),
        ("aiot/lab/pi1/score", raw({"ts": 1.0, "scores": "high"})), ("aiot/lab/pi1/status", b"sleepy"),
        ("aiot/lab/pi1/ack", raw({"event_id": "e1"})), ("aiot/lab/pi1/alert", raw([1, 2, 3])),
        ("aiot/lab/pi1/alert", b"\xff\xfe\xfd"),
    ]
    for topic, payload in bad:
        assert not sub.handle(topic, payload)
    assert sum(sub.dropped.values()) == len(bad)
    assert set(sub.dropped) == {"not_json", "too_big", "missing_field", "wrong_type", "bad_status", "not_object",
                                "not_utf8"}
    assert sub.store.count_alerts() == 0
    assert sub.handle("aiot/lab/pi1/alert", raw(alert()))  # still working
    assert sub.store.count_alerts() == 1
    assert not sub.handle("aiot/lab/pi1/ack", b"")  # a cleared retained ack: ignored, not counted bad
    assert sum(sub.dropped.values()) == len(bad)


def test_acknowledge_unknown_and_known_alerts(sub: Subscriber):
    assert sub.acknowledge("nope", "ops") is None
    sub.handle("aiot/lab/pi1/alert", raw(alert("e1")))
    ack = sub.acknowledge("e1", "ops")
    assert ack is not None and ack["by"] == "ops"
    assert sub.acknowledge("e1", "someone else") == ack  # the first ack stands
    assert sub.store.alert("e1")["ack_by"] == "ops"


# -- web server guards ------------------------------------------------------------------------------


def test_listen_addresses():
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":9000") == ("127.0.0.1", 9000)
    for bad in ("8080", "host:", "host:99999", "host:http"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("example.org")


def test_non_loopback_needs_a_token(tmp_path: Path):
    with pytest.raises(ConfigError, match="token"):
        Dashboard(DashboardConfig(listen="0.0.0.0:8080", db=str(tmp_path / "d.db")))
    Dashboard(DashboardConfig(listen="0.0.0.0:8080", db=str(tmp_path / "d.db"), token="s3cret"))  # no error
    with pytest.raises(ConfigError, match="site"):
        Dashboard(DashboardConfig(site="a/b", db=str(tmp_path / "d.db")))


def _request(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_token_and_ack_guards_on_a_real_server(tmp_path: Path):
    # the broker is unreachable on purpose: the page and the stored history still work without it
    cfg = DashboardConfig(broker="mqtt://127.0.0.1:1", listen="127.0.0.1:0", db=str(tmp_path / "d.db"),
                          token="s3cret", operator="dash1")
    with Dashboard(cfg) as dash:
        assert dash.store is not None and dash.subscriber is not None
        dash.subscriber.handle("aiot/lab/pi1/alert", raw(alert("e1")))
        url = dash.url
        status, _ = _request(url)
        assert status == 401
        assert _request(url, headers={"Authorization": "Bearer wrong"})[0] == 401
        status, body = _request(url, headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and b"/static/app.js" in body
        basic = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        assert _request(url + "static/app.js", headers={"Authorization": basic})[0] == 200
        assert _request(url + "static/../runner.py", headers={"Authorization": basic})[0] == 404
        ack_url = url + "api/ack"
        body = raw({"event_id": "e1"})
        # a form post from another site (no JSON content type), or JSON with a foreign Origin: refused
        assert _request(ack_url, body, {"Authorization": basic})[0] == 415
        assert _request(ack_url, body, {"Authorization": basic, "Content-Type": "application/json",
                                        "Origin": "http://evil.example"})[0] == 403
        assert _request(ack_url, raw({"event_id": "zz"}), {"Authorization": basic,
                                                           "Content-Type": "application/json"})[0] == 404
        status, ack = _request(ack_url, body, {"Authorization": basic, "Content-Type": "application/json"})
        assert status == 200 and json.loads(ack)["by"] == "alice@dash1"
        status, health = _request(url + "api/health", headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and json.loads(health)["alerts_stored"] == 1


# -- live fan-out -----------------------------------------------------------------------------------


def test_hub_fans_out_and_drops_a_page_that_falls_behind():
    import asyncio

    from aiot_edge.dashboard import hub as hub_module

    async def scenario() -> tuple[list[str], bool, list[str | None], int]:
        hub = Hub()
        loop = asyncio.get_running_loop()
        fast, slow = hub.connect(loop), hub.connect(loop)
        hub.publish("alert", {"event_id": "e1"})
        await asyncio.sleep(0)  # the loop runs the queued puts
        got = [fast.queue.get_nowait()]
        for i in range(hub_module.QUEUE_SIZE + 1):  # slow never reads: its queue overflows
            hub.publish("score", {"i": i})
            if i % 1000 == 0:
                while not fast.queue.empty():
                    fast.queue.get_nowait()
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        left = [slow.queue.get_nowait() for _ in range(slow.queue.qsize())]
        hub.disconnect(slow)
        return got, slow.dropped, left, hub.slow_clients_dropped

    got, dropped, left, n_dropped = asyncio.run(scenario())
    assert got == ['event: alert\ndata: {"event_id":"e1"}\n\n']
    assert dropped and left == [None] and n_dropped == 1  # only the end-of-stream marker is left for it


def test_cli_refuses_an_open_listen_address_without_a_token(tmp_path: Path, capfd):
    from aiot_edge.cli import main

    assert main(["dashboard", "--listen", "0.0.0.0:0", "--db", str(tmp_path / "d.db")]) == 2
    assert "give a token" in capfd.readouterr().err
    assert main(["dashboard", "--listen", "localhost", "--db", str(tmp_path / "d.db")]) == 2
    assert not (tmp_path / "d.db").exists()  # refused before anything was created


def test_score_history_is_thinned_to_the_peaks(tmp_path: Path):
    import time

    with Store(tmp_path / "dash.db", history_s=3600.0) as store:
        now = time.time()
        for i in range(3600):  # one device scoring every second for an hour, a spike at 1800 s
            store.add_score("lab", "pi1", now - 3600 + i + 0.5, 9.0 if i == 1800 else 1.0 + (i % 2), 5.0)
        points = store.series(max_points=720)["lab/pi1"]
        assert 700 <= len(points) <= 721
        assert max(p[1] for p in points) == 9.0  # the spike survives the thinning
        assert {p[1] for p in points} <= {2.0, 9.0}  # each 5 s bucket keeps its highest score
        assert all(p[2] == 5.0 for p in points)
        assert [p[0] for p in points] == sorted(p[0] for p in points)
        assert len(store.series(max_points=100_000)["lab/pi1"]) >= 3590  # all (the oldest may age out meanwhile)
