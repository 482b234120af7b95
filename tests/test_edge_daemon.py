"""aiot_edge.daemon / cli as processes: signals, last will, crash + restart, bad input, --once, score, sd_notify.

Daemons run as `python -m aiot_edge.cli run ...` children against a real mosquitto; every child and
broker is killed at teardown (fixtures in edge_fixtures.py), also when a test fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from aiot_edge.cli import main as cli_main
from edge_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    LOUD,
    SR,
    FedSource,
    brokers_fixture,
    daemon_config,
    daemons_fixture,
    edge_config,
    pattern_signal,
    run_daemon_fixture,
    spool_rows,
    subscribers_fixture,
    tiny_bundle_fixture,
    wait_for,
    write_wav,
)

CLIENT = "aiot-edge-lab-pi1"


def _config(tmp_path: Path, bundle: Path, broker_port: int, **values) -> Path:
    return edge_config(tmp_path / "edge.yaml", bundle=str(bundle), broker=f"mqtt://127.0.0.1:{broker_port}",
                       spool={"path": str(tmp_path / "spool.db")}, **values)


def test_status_online_then_last_will_on_sigkill(tmp_path, brokers, subscribers, daemons, tiny_bundle) -> None:
    broker = brokers().start()
    sub = subscribers(broker, topics="aiot/lab/pi1/status")
    d = daemons("--config", str(_config(tmp_path, tiny_bundle, broker.port)), "--source", "stdin",
                stdin=subprocess.PIPE)  # an open, silent pipe: the daemon runs until killed
    wait_for(lambda: [m for m in sub.on("/status") if m.payload == b"online"], what="status online")
    d.signal(signal.SIGKILL)
    d.wait(10)
    wait_for(lambda: sub.on("/status")[-1].payload == b"offline", what="offline via the last will")
    log = broker.log_text()
    assert f"Received DISCONNECT from {CLIENT}" not in log  # no clean goodbye: the broker sent the will
    late = subscribers(broker, topics="aiot/lab/pi1/status")
    retained = wait_for(lambda: late.on("/status"), what="retained status")[0]
    assert retained.retain and retained.payload == b"offline"


def test_sigterm_publishes_offline_and_exits_cleanly(tmp_path, brokers, subscribers, daemons, tiny_bundle) -> None:
    broker = brokers().start()
    sub = subscribers(broker, topics="aiot/lab/pi1/status")
    d = daemons("--config", str(_config(tmp_path, tiny_bundle, broker.port)), "--source", "stdin",
                stdin=subprocess.PIPE)
    wait_for(lambda: [m for m in sub.on("/status") if m.payload == b"online"], what="status online")
    d.signal(signal.SIGTERM)
    assert d.wait(10) == 0, d.log()
    wait_for(lambda: sub.on("/status")[-1].payload == b"offline", what="status offline")
    # the broker logs the DISCONNECT on its own time, after the daemon has exited: wait for the line
    wait_for(lambda: f"Received DISCONNECT from {CLIENT}" in broker.log_text(), what="DISCONNECT in the broker log")
    log = broker.log_text()
    # a normal retained publish of "offline" (7 bytes), then a clean DISCONNECT (so no will)
    published = re.search(rf"Received PUBLISH from {CLIENT} \(d0, q1, r1, m\d+, 'aiot/lab/pi1/status', "
                          r"\.\.\. \(7 bytes\)\)", log)
    assert published, log[-2000:]
    assert log.index(f"Received DISCONNECT from {CLIENT}") > published.start()
    assert "stopping reason=SIGTERM" in d.log() and "final counters" in d.log()


def test_sigkill_with_broker_down_then_restart_delivers_spool(tmp_path, brokers, subscribers, daemons,
                                                              tiny_bundle) -> None:
    broker = brokers()  # not started yet: the broker is down
    write_wav(tmp_path / "loud.wav", pattern_signal(4))
    write_wav(tmp_path / "quiet.wav", np.zeros(SR // 2, np.float32))
    config = str(_config(tmp_path, tiny_bundle, broker.port))
    first = daemons("--config", config, "--source", f"file:{tmp_path / 'loud.wav'}")
    wait_for(lambda: spool_rows(tmp_path / "spool.db") == 4, timeout=15, what="4 spooled alerts")
    first.signal(signal.SIGKILL)
    first.wait(10)
    assert spool_rows(tmp_path / "spool.db") == 4

    broker.start()
    sub = subscribers(broker, topics="aiot/+/+/alert")
    second = daemons("--config", config, "--source", f"file:{tmp_path / 'quiet.wav'}", "--once")
    assert second.wait(20) == 0, second.log()
    wait_for(lambda: len(sub.alert_ids()) == 4, what="the 4 alerts spooled before the kill")
    assert spool_rows(tmp_path / "spool.db") == 0
    assert "holds 4 unsent message(s) from an earlier run" in second.log()
    starts = [m.json()["window_start"] for m in sub.on("/alert")]
    assert starts == sorted(starts)  # replayed in the order they were raised


def test_broker_never_up_once_exits_nonzero_and_keeps_alerts(tmp_path, brokers, daemons, tiny_bundle) -> None:
    broker = brokers()  # never started
    write_wav(tmp_path / "loud.wav", pattern_signal(2))
    d = daemons("--config", str(_config(tmp_path, tiny_bundle, broker.port)), "--source",
                f"file:{tmp_path / 'loud.wav'}", "--once", "--once-timeout", "1.5")
    assert d.wait(20) == 3
    log = d.log()
    assert "--once timed out after 1.5 s with 2 alert(s) still unsent" in log
    assert "cannot reach broker" in log and "Connection refused" in log
    assert spool_rows(tmp_path / "spool.db") == 2


def test_corrupt_bundle_is_a_clear_error(tmp_path, daemons, tiny_bundle) -> None:
    bad = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bad)
    with open(bad / "model.onnx", "r+b") as f:
        f.seek(20)
        f.write(b"\xff\xfe\xfd")
    d = daemons("--bundle", str(bad), "--source", "stdin", "--broker", "mqtt://127.0.0.1:1",
                "--spool", str(tmp_path / "s.db"))
    assert d.wait(20) == 2
    assert "cannot start: corrupt or invalid bundle" in d.log() and "sha256 mismatch" in d.log()

    (bad / "bundle.json").write_text("{ not json")
    d = daemons("--bundle", str(bad), "--source", "stdin", "--spool", str(tmp_path / "s.db"))
    assert d.wait(20) == 2 and "not valid JSON" in d.log()


def test_broken_wav_in_watched_folder_is_skipped(tmp_path, brokers, subscribers, daemons, tiny_bundle) -> None:
    broker = brokers().start()
    sub = subscribers(broker, topics="aiot/+/+/alert")
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "a_broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    os.utime(folder / "a_broken.wav", (time.time() - 10, time.time() - 10))  # oldest: processed first
    write_wav(folder / "b_good.wav", pattern_signal(2))
    status = tmp_path / "status.json"
    d = daemons("--config", str(_config(tmp_path, tiny_bundle, broker.port, input={"settle_s": 0.0, "poll_s": 0.05})),
                "--source", f"folder:{folder}", "--once", "--status-file", str(status))
    assert d.wait(20) == 0, d.log()
    wait_for(lambda: len(sub.alert_ids()) == 2, what="alerts from the good file")
    assert "skipping broken file" in d.log() and "a_broken.wav" in d.log()
    counters = json.loads(status.read_text())
    assert counters["files_failed"] == 1 and counters["alerts_delivered"] == 2 and counters["final"] is True


def test_8khz_stereo_pcm_on_stdin(tmp_path, brokers, subscribers, daemons, tiny_bundle) -> None:
    broker = brokers().start()
    sub = subscribers(broker, topics="aiot/+/+/alert")
    mono = pattern_signal(3, sr=8000)  # (T,) at 8 kHz
    stereo = np.stack([mono, mono], axis=1)  # (T, 2): both channels loud together
    pcm = (stereo * 32767).astype("<i2").tobytes()
    d = daemons("--config", str(_config(tmp_path, tiny_bundle, broker.port)), "--source", "stdin",
                "--input-rate", "8000", "--channels", "2", "--once", stdin=subprocess.PIPE)
    d.proc.stdin.write(pcm)
    d.proc.stdin.close()
    assert d.wait(20) == 0, d.log()
    wait_for(lambda: len(sub.alert_ids()) == 3, what="3 alerts from 8 kHz stereo")
    assert [m.json()["window_start"] for m in sub.on("/alert")] == pytest.approx([0.1, 0.3, 0.5])


def test_config_errors_exit_2_and_name_the_key(tmp_path, daemons, tiny_bundle) -> None:
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(f"bundle: {tiny_bundle}\nsource: stdin\nspool:\n  max_rows: many\n")
    d = daemons("--config", str(cfg))
    assert d.wait(20) == 2 and "spool.max_rows must be an integer" in d.log()


def test_sd_notify_ready_watchdog_stopping(tmp_path, monkeypatch, brokers, run_daemon, tiny_bundle) -> None:
    broker = brokers().start()
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
        monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
        d = run_daemon(daemon_config(tmp_path, broker, tiny_bundle, health_every_s=0.1), FedSource())
        got: list[str] = []
        wait_for(lambda: got.append(sock.recv(4096).decode()) or sum("WATCHDOG=1" in g for g in got) >= 2,
                 what="watchdog pings")
        assert got[0] == "READY=1"
        assert any(g.startswith("STATUS=windows=") for g in got)
        assert d.stop() == 0
        wait_for(lambda: got.append(sock.recv(4096).decode()) or "STOPPING=1" in got, what="STOPPING=1")


def test_score_cli_reports_bad_files(tmp_path, tiny_bundle, capsys) -> None:
    good = write_wav(tmp_path / "good.wav", pattern_signal(1))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    assert cli_main(["score", "--bundle", str(tiny_bundle), "--machine", "fan", "--machine-id", "id_00",
                     str(good), str(broken)]) == 1
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3 and [r["anomaly"] for r in rows] == [False, True, False]
    assert rows[1]["scores"]["peak"] == pytest.approx(LOUD, abs=1e-3) and rows[1]["machine"] == "fan"
    assert "broken.wav" in err and "1 file(s) failed" in err

    assert cli_main(["score", "--bundle", str(tiny_bundle), str(good)]) == 0  # one-machine bundle: no flags
    assert cli_main(["score", "--bundle", str(tmp_path / "missing"), str(good)]) == 2
    sf.write(tmp_path / "x.wav", np.zeros(10, np.float32), SR)  # shorter than a window: padded, still scored
    assert cli_main(["score", "--bundle", str(tiny_bundle), str(tmp_path / "x.wav")]) == 0


class _BrokenSource(FedSource):
    """A live source whose reader dies of an error nobody planned for (a bug, a symlink loop, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.crash = threading.Event()

    def __iter__(self):
        self.crash.wait(20)
        yield from ()
        raise RuntimeError("Symlink loop from 'WATCH/l.wav'")


def test_source_thread_crash_ends_the_daemon_with_an_error(tmp_path, brokers, subscribers, run_daemon,
                                                           tiny_bundle) -> None:
    # Once, the source thread died and the daemon stayed `online`, fed the watchdog and scored nothing.
    broker = brokers().start()
    sub = subscribers(broker, topics="aiot/lab/pi1/status")
    source = _BrokenSource()
    d = run_daemon(daemon_config(tmp_path, broker, tiny_bundle), source)
    wait_for(lambda: [m for m in sub.on("/status") if m.payload == b"online"], what="status online")
    source.crash.set()
    assert d.join(15) == 1
    wait_for(lambda: sub.on("/status") and sub.on("/status")[-1].payload == b"offline", what="status offline")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread dies on purpose
def test_a_dead_mqtt_thread_ends_the_daemon_with_an_error(tmp_path, brokers, run_daemon, tiny_bundle,
                                                          caplog) -> None:
    # A keepalive beyond MQTT's 16 bits killed paho's network thread at connect; the daemon then ran
    # on without ever connecting. The config refuses that value now; any dead publisher thread is fatal.
    broker = brokers().start()
    cfg = daemon_config(tmp_path, broker, tiny_bundle)
    cfg = dataclasses.replace(cfg, mqtt=dataclasses.replace(cfg.mqtt, keepalive_s=1_000_000_000))  # unchecked
    d = run_daemon(cfg, FedSource())
    assert d.join(15) == 1
    assert "MQTT network thread died" in caplog.text


def test_a_file_redone_after_a_crash_raises_the_same_event_ids(tmp_path, brokers, subscribers, daemons,
                                                               tiny_bundle) -> None:
    # A file re-done after a crash re-raised its alerts with new random ids; dashboards showed them twice.
    broker = brokers().start()
    sub = subscribers(broker, topics="aiot/+/+/alert")
    clip = write_wav(tmp_path / "loud.wav", pattern_signal(3))
    runs = []
    for i in range(2):  # two runs with fresh spools: what a crash between scoring and the state save replays
        d = daemons("--config", str(_config(tmp_path, tiny_bundle, broker.port)), "--source", f"file:{clip}",
                    "--spool", str(tmp_path / f"spool{i}.db"), "--once")
        assert d.wait(20) == 0, d.log()
        wait_for(lambda n=3 * (i + 1): len(sub.on("/alert")) == n, what="alerts of the run")
        runs.append([m.json()["event_id"] for m in sub.on("/alert")][3 * i:])
    assert runs[0] == runs[1] and len(set(runs[0])) == 3
    assert all(uuid.UUID(e).version == 5 for e in runs[0])


def test_a_clip_shorter_than_one_window_is_padded_and_scored_like_score_does(tmp_path, brokers, subscribers,
                                                                            daemons, tiny_bundle) -> None:
    # `run` marked such clips done with 0 windows and no log line, while `score` padded them.
    broker = brokers().start()
    sub = subscribers(broker, topics="aiot/+/+/alert")
    clip = write_wav(tmp_path / "short.wav", np.full(800, LOUD, np.float32))  # half a window
    d = daemons("--config", str(_config(tmp_path, tiny_bundle, broker.port)), "--source", f"file:{clip}", "--once")
    assert d.wait(20) == 0, d.log()
    alert = wait_for(lambda: sub.on("/alert"), what="the padded clip's alert")[0].json()
    assert (alert["window_start"], alert["window_end"]) == (0.0, pytest.approx(0.05))
    assert "shorter than one window" in d.log() and "zero-padded" in d.log()
    assert cli_main(["score", "--bundle", str(tiny_bundle), str(clip)]) == 0  # the same rule offline


def _square_bundle(folder):
    """Like the tiny bundle, but scores = max(audio^2): samples of 1e20 overflow float32 to inf."""
    from edge_fixtures import WINDOW, build_bundle
    from onnx import TensorProto, helper, save_model

    build_bundle(folder)
    nodes = [helper.make_node("Mul", ["audio", "audio"], ["sq"]),
             helper.make_node("ReduceMax", ["sq"], ["scores"], axes=[1], keepdims=1)]
    graph = helper.make_graph(nodes, "square",
                              [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", WINDOW])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, str(folder / "model.onnx"))
    data = json.loads((folder / "bundle.json").read_text())
    data["model"]["sha256"] = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    (folder / "bundle.json").write_text(json.dumps(data))
    return folder


def test_non_finite_windows_are_counted_as_failed(tmp_path, brokers, daemons) -> None:
    broker = brokers().start()
    bundle = _square_bundle(tmp_path / "bundle")
    clip = tmp_path / "huge.wav"
    sf.write(clip, np.concatenate([np.zeros(1600, np.float32), np.full(3200, 1e20, np.float32)]), SR,
             subtype="FLOAT")
    status = tmp_path / "status.json"
    d = daemons("--config", str(_config(tmp_path, bundle, broker.port)), "--source", f"file:{clip}", "--once",
                "--status-file", str(status))
    assert d.wait(20) == 0, d.log()
    counters = json.loads(status.read_text())
    assert counters["windows_scored"] == 3 and counters["windows_failed"] == 2 and counters["alerts_raised"] == 0


def test_symlink_loop_in_the_watched_folder_is_skipped(tmp_path, brokers, subscribers, daemons,
                                                       tiny_bundle) -> None:
    # `ln -s l.wav WATCH/l.wav` killed the source thread; the daemon stayed online and scored nothing.
    broker = brokers().start()
    sub = subscribers(broker, topics="aiot/+/+/alert")
    folder = tmp_path / "incoming"
    folder.mkdir()
    os.symlink("l.wav", folder / "l.wav")
    write_wav(folder / "m_good.wav", pattern_signal(2))
    d = daemons("--config", str(_config(tmp_path, tiny_bundle, broker.port, input={"settle_s": 0.0, "poll_s": 0.05})),
                "--source", f"folder:{folder}", "--once")
    assert d.wait(20) == 0, d.log()
    wait_for(lambda: len(sub.alert_ids()) == 2, what="alerts from the good file")
    assert "l.wav" in d.log() and "cannot look at it" in d.log()
