"""Fixtures and helpers for the edge daemon tests: a real mosquitto, certificates, a tiny bundle, subscribers.

Fixtures are defined as `<name>_fixture` with `name="<name>"`: a test module imports
`brokers_fixture` (noqa: F401) and takes `brokers` as an argument, so the import and the argument
do not shadow each other.
Nothing here imports torch: the bundle's model is built with `onnx.helper`
(scores = ReduceMax(Abs(audio)), one scorer), so a window alerts exactly when its peak is loud.
Every broker and daemon process started here is stopped at teardown, also when a test fails.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
import soundfile as sf
from aiot_edge.broker import MosquittoProcess, find_mosquitto
from aiot_edge.bundle import sha256_file, write_bundle_json
from aiot_edge.config import EdgeConfig, with_overrides
from aiot_edge.daemon import Daemon
from aiot_edge.sources import Chunk, Source
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from system_packages import missing_system_package

SR = 16000
WINDOW = 1600  # 0.1 s windows, hop = window: one window per segment of the test signals
THRESHOLD = 0.7  # loud segments peak at 0.9, quiet ones at 0.0 (resampling edges stay near 0.45)
LOUD = 0.9
REPO = Path(__file__).resolve().parents[1]

MOSQUITTO_MISSING = missing_system_package("mosquitto", needed_for="a real MQTT broker")
needs_mosquitto = pytest.mark.skipif(find_mosquitto() is None, reason=MOSQUITTO_MISSING)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


# -- audio and bundle ------------------------------------------------------------------------------


def pattern_signal(n_loud: int, sr: int = SR, quiet_first: bool = True) -> np.ndarray:
    """Alternating quiet / loud windows at `sr`: with k=n=1 each loud window raises exactly one alert."""
    seg = int(round(WINDOW * sr / SR))
    parts = []
    for _ in range(n_loud):
        if quiet_first:
            parts.append(np.zeros(seg, np.float32))
        parts.append(np.full(seg, LOUD, np.float32))
        if not quiet_first:
            parts.append(np.zeros(seg, np.float32))
    parts.append(np.zeros(seg, np.float32))
    return np.concatenate(parts)


def write_wav(path: Path, x: np.ndarray, sr: int = SR) -> Path:
    sf.write(path, x, sr, subtype="PCM_16")
    return path


def build_bundle(folder: Path, threshold: float = THRESHOLD) -> Path:
    """A bundle per docs/bundle.md whose model is scores = max|audio| over the window, shape [batch, 1]."""
    from onnx import TensorProto, helper, save_model  # test-only dependency (the training side has it)

    folder.mkdir(parents=True, exist_ok=True)
    audio = helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", WINDOW])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 1])
    nodes = [helper.make_node("Abs", ["audio"], ["magnitude"]),
             helper.make_node("ReduceMax", ["magnitude"], ["scores"], axes=[1], keepdims=1)]  # (batch, 1)
    graph = helper.make_graph(nodes, "peak", [audio], [scores])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="aiot-edge-tests")
    model.ir_version = 8  # readable by every onnxruntime the edge supports
    save_model(model, str(folder / "model.onnx"))
    write_bundle_json(folder, {
        "format": "aiot-w2v2-bundle", "format_version": 1, "created": "2026-01-01T00:00:00Z",
        "sample_rate": SR, "window": WINDOW, "hop": WINDOW, "columns": ["fan/id_00/peak"],
        "machines": {"fan/id_00": {"machine": "fan", "machine_id": "id_00", "scorers": {"peak": 0},
                                   "decision_scorer": "peak", "thresholds": {"peak": threshold}}},
        "model": {"file": "model.onnx", "sha256": sha256_file(folder / "model.onnx"), "opset": 17,
                  "quantization": "none", "name": "peak-test"},
        "training": {"config_hash": "0123456789abcdef", "run": "tests"},
    })
    return folder


@pytest.fixture(scope="session", name="tiny_bundle")
def tiny_bundle_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("bundle"))


def spool_rows(path: Path) -> int:
    """Rows in a spool file, read from outside the daemon (WAL allows a concurrent reader)."""
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=5) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        except sqlite3.OperationalError:
            return 0  # the daemon has not created the table yet


# -- certificates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certs(folder: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1 (IP SAN) and a client certificate, via the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=aiot test CA",
             cwd=folder)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (folder / f"{name}.ext").write_text(ext + "\n")
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
                 cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)
    return Certs(folder / "ca.crt", folder / "server.crt", folder / "server.key", folder / "client.crt",
                 folder / "client.key")


@pytest.fixture(scope="session", name="certs")
def certs_fixture(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.skip(missing_system_package("openssl", needed_for="the TLS tests' certificates"))
    return make_certs(tmp_path_factory.mktemp("certs"))


# -- brokers ---------------------------------------------------------------------------------------


class BrokerFactory:
    """Creates mosquitto brokers for a test (not started: call .start()); stops them all at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.brokers: list[MosquittoProcess] = []

    def __call__(self, *, persistence: bool = False, passwords: dict[str, str] | None = None,
                 certs: Certs | None = None, require_client_cert: bool = False) -> MosquittoProcess:
        workdir = self.root / f"broker{len(self.brokers)}"
        workdir.mkdir(parents=True)
        extra, listener = [], []
        if persistence:
            extra += ["persistence true", f"persistence_location {workdir}/", "autosave_interval 1"]
        if passwords:
            pwfile = workdir / "passwd"
            for i, (user, password) in enumerate(passwords.items()):
                flags = ["-c"] if i == 0 else []
                subprocess.run(["mosquitto_passwd", *flags, "-b", str(pwfile), user, password], check=True,
                               capture_output=True, timeout=30)
            extra += ["allow_anonymous false", f"password_file {pwfile}"]
        if certs is not None:
            listener += [f"cafile {certs.ca}", f"certfile {certs.server_cert}", f"keyfile {certs.server_key}",
                         f"require_certificate {'true' if require_client_cert else 'false'}"]
        broker = MosquittoProcess(workdir, extra_config="\n".join(extra),
                                  listener_options="".join(line + "\n" for line in listener))
        self.brokers.append(broker)
        return broker

    def stop_all(self) -> None:
        for broker in self.brokers:
            broker.stop()


@pytest.fixture(name="brokers")
def brokers_fixture(tmp_path: Path) -> Iterator[BrokerFactory]:
    if find_mosquitto() is None:
        pytest.skip(MOSQUITTO_MISSING)
    factory = BrokerFactory(tmp_path / "brokers")
    try:
        yield factory
    finally:
        factory.stop_all()


# -- subscribers -----------------------------------------------------------------------------------


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    properties: Any

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client that records every message on `topics`; reconnects and re-subscribes by itself.

    `persistent=True` uses a fixed client id without a clean session, so a broker with persistence
    queues QoS 1 messages published while this subscriber is away (broker restarts).
    """

    def __init__(self, broker: MosquittoProcess, topics: str = "#", persistent: bool = False,
                 tls: Certs | None = None, username: str | None = None, password: str | None = None,
                 v5: bool = False) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()
        self.topics = topics
        client_id = f"test-sub-{uuid.uuid4().hex[:8]}"
        if v5:
            self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                      protocol=MQTTProtocolVersion.MQTTv5)
        else:
            self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                      clean_session=not persistent)
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(ca_certs=str(tls.ca), certfile=str(tls.client_cert), keyfile=str(tls.client_key))
        self.client.connect_async(broker.host, broker.port)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, 10, what="the test subscriber to subscribe")

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topics, qos=1)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Message(msg.topic, msg.payload, bool(msg.retain), msg.qos,
                                         getattr(msg, "properties", None)))

    def on(self, suffix: str) -> list[Message]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def alert_ids(self) -> set[str]:
        return {m.json()["event_id"] for m in self.on("/alert")}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(name="subscribers")
def subscribers_fixture() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(broker: MosquittoProcess, **kwargs: Any) -> Subscriber:
        sub = Subscriber(broker, **kwargs)
        made.append(sub)
        return sub

    try:
        yield make
    finally:
        for sub in made:
            sub.close()


# -- daemon subprocesses ---------------------------------------------------------------------------


def edge_config(path: Path, **values: Any) -> Path:
    """Write a daemon config with test-friendly defaults (fast reconnects, k=n=1, no cooldown)."""
    base: dict[str, Any] = {
        "site": "lab", "device": "pi1", "machine": "fan", "machine_id": "id_00",
        "decision": {"k": 1, "n": 1, "hysteresis": 0.0, "cooldown_s": 0.0},
        "mqtt": {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive_s": 5},
        "telemetry_every_s": 0, "health_every_s": 0, "once_timeout_s": 10, "log_level": "INFO",
    }
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    import yaml

    path.write_text(yaml.safe_dump(base))
    return path


class DaemonProcess:
    """`python -m aiot_edge.cli run ...` as a child; stderr goes to a file the test can read."""

    def __init__(self, args: list[str], log_file: Path, stdin: int | None = subprocess.DEVNULL) -> None:
        self.log_file = log_file
        self._log = open(log_file, "wb")  # closed in wait() / kill()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "aiot_edge.cli", "run", *args], stdin=stdin,
                                     stdout=subprocess.DEVNULL, stderr=self._log, env=env, cwd=REPO)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._log.close()


@pytest.fixture(name="daemons")
def daemons_fixture(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    made: list[DaemonProcess] = []

    def start(*args: str, stdin: int | None = subprocess.DEVNULL) -> DaemonProcess:
        d = DaemonProcess(list(args), tmp_path / f"daemon{len(made)}.log", stdin=stdin)
        made.append(d)
        return d

    try:
        yield start
    finally:
        for d in made:
            d.kill()



# -- in-process daemons ----------------------------------------------------------------------------


class FedSource(Source):
    """A source the test feeds chunk by chunk (a live stream it controls); `finish()` ends it."""

    def __init__(self, sample_rate: int = SR) -> None:
        super().__init__(sample_rate)
        self._queue: queue.Queue[Chunk | None] = queue.Queue()
        self._t = 0

    def feed(self, samples: np.ndarray) -> None:
        self._queue.put(Chunk(samples.astype(np.float32), "fed", self._t / self.sample_rate))
        self._t += samples.shape[0]

    def finish(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[Chunk]:
        while not self.stopped:
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is None:
                return
            yield item


def daemon_config(tmp_path: Path, broker: MosquittoProcess | str, bundle: Path, **overrides: Any) -> EdgeConfig:
    """An EdgeConfig for in-process daemons; `overrides` use dotted keys with '__' for '.'."""
    url = broker if isinstance(broker, str) else f"mqtt://{broker.host}:{broker.port}"
    values: dict[str, Any] = {
        "bundle": str(bundle), "source": "stdin", "site": "lab", "device": "pi1", "broker": url,
        "spool.path": str(tmp_path / "spool.db"), "decision.k": 1, "decision.n": 1, "decision.cooldown_s": 0.0,
        "mqtt.reconnect_min_s": 0.1, "mqtt.reconnect_max_s": 0.5, "telemetry_every_s": 0.0,
        "health_every_s": 0.0, "once_timeout_s": 10.0,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return with_overrides(EdgeConfig(), values)


class DaemonThread:
    """`Daemon.run()` in a thread; `stop()` asks it to stop and returns its exit code."""

    def __init__(self, cfg: EdgeConfig, source: Source | None = None) -> None:
        self.daemon = Daemon(cfg, source)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, name="test-daemon", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.daemon.run()

    def join(self, timeout: float = 20.0) -> int | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "daemon did not stop"
        return self.code

    def stop(self, timeout: float = 20.0) -> int | None:
        self.daemon.request_stop("test")
        return self.join(timeout)


@pytest.fixture(name="run_daemon")
def run_daemon_fixture() -> Iterator[Callable[..., DaemonThread]]:
    made: list[DaemonThread] = []

    def start(cfg: EdgeConfig, source: Source | None = None) -> DaemonThread:
        d = DaemonThread(cfg, source)
        made.append(d)
        return d

    try:
        yield start
    finally:
        for d in made:
            if d.thread.is_alive():
                d.stop()


# -- a real full disk ------------------------------------------------------------------------------


class SmallDisk:
    """A 256 KB tmpfs mounted for one test: `fill()` takes every free byte, `free()` gives it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self) -> int:
        """Write a filler file until the disk says ENOSPC; returns the bytes written."""
        written = 0
        with open(self._filler, "ab", buffering=0) as f:
            while True:
                try:
                    written += f.write(b"\0" * 512)
                except OSError as err:
                    if err.errno == errno.ENOSPC:
                        return written
                    raise

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


@pytest.fixture(name="small_disk")
def small_disk_fixture(tmp_path: Path) -> Iterator[SmallDisk]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                          text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 256 KB tmpfs to fill a real disk (needs root): {done.stderr.strip()}")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)

