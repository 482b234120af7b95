"""The live dashboard under load: 50 devices publishing scores every second, then a burst of 1,000 alerts.

Everything is real and local: a mosquitto child process, `aiot-edge dashboard` as a child process
(as an operator starts it), 50 paho clients (one per simulated device, each with its retained
status and last will) and a Server-Sent Events client that reads `/api/events` like the page does.

- Every device publishes `{ts, scores, window_s, scorer, threshold}` once a second (QoS 0), the 50
  spread evenly over the second; `ts` is `time.time()` at publish.
- At `--burst-at` seconds, 1,000 alerts (20 per device, QoS 1, each with its own event_id) go out as
  fast as the clients can send them, plus `--duplicates` re-sends of some of them (at-least-once
  delivery), which the dashboard must store and show once.

Measured:
- count in vs out: scores and alerts published, received by the dashboard (its /api/health), events
  received by the SSE client, alerts stored; no loss means out == in for each;
- page update latency: SSE receipt time - the message's `ts` (both this machine's clock), median and
  p99, for the steady scores and for the burst's alerts; the burst's drain time (first alert
  published -> last alert event received);
- dashboard memory: VmRSS every 0.5 s (median, max), VmHWM at the end; its CPU share of one core.

    python benchmarks/dashboard_load.py --seconds 60 --out benchmarks/results/dashboard_load.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import urlopen

import numpy as np
import paho.mqtt.client as paho
from aiot_edge.broker import MosquittoProcess
from paho.mqtt.enums import CallbackAPIVersion
from procstat import proc_cpu_s, proc_mem_kb

REPO = Path(__file__).resolve().parents[1]


class SSEClient(threading.Thread):
    """Reads /api/events and records (receipt time, kind, data) for every event after the snapshot."""

    def __init__(self, url: str) -> None:
        super().__init__(name="sse-client", daemon=True)
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.snapshot = threading.Event()

    def run(self) -> None:
        self.conn.request("GET", "/api/events", headers={"Accept": "text/event-stream"})
        resp = self.conn.getresponse()
        kind = ""
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                now = time.time()
                if kind == "snapshot":
                    self.snapshot.set()
                else:
                    self.events.append((now, kind, json.loads(line[6:])))

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, d) for t, k, d in list(self.events) if k == kind]


class Device:
    """One simulated device: a paho client with the daemon's retained status and last will."""

    def __init__(self, broker: MosquittoProcess, site: str, name: str) -> None:
        self.name = name
        self.topic = f"aiot/{site}/{name}"
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{name}")
        self.client.will_set(f"{self.topic}/status", "offline", qos=1, retain=True)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.publish(f"{self.topic}/status", "online", qos=1, retain=True)
        self.scores_sent = 0

    def score(self, rng: np.random.Generator) -> None:
        payload = {"ts": round(time.time(), 4), "scores": {"mahalanobis": float(rng.normal(10, 1))}, "window_s": 1.0,
                   "scorer": "mahalanobis", "threshold": 14.0}
        info = self.client.publish(f"{self.topic}/score", json.dumps(payload), qos=0)
        self.scores_sent += info.rc == 0

    def alert(self, event_id: str, i: int) -> paho.MQTTMessageInfo:
        payload = {"event_id": event_id, "device": self.name, "machine": "pump", "machine_id": "id_00",
                   "ts": round(time.time(), 4), "score": 15.0 + i % 7, "threshold": 14.0, "scorer": "mahalanobis",
                   "model": "bench", "severity": "warning", "window_start": float(i), "window_end": i + 2.0,
                   "source": f"/srv/recordings/{self.name}/clip_{i:05d}.wav"}
        return self.client.publish(f"{self.topic}/alert", json.dumps(payload), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_dashboard(broker: MosquittoProcess, db: Path, log_file: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "aiot_edge.cli", "dashboard", "--broker",
                             f"mqtt://{broker.host}:{broker.port}", "--listen", "127.0.0.1:0", "--db", str(db),
                             "--log-level", "WARNING"],
                            stdout=subprocess.PIPE, stderr=open(log_file, "w"), text=True, cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()  # type: ignore[union-attr]
    first = lines.get(timeout=60)
    if not first.startswith("dashboard: "):
        raise RuntimeError(f"the dashboard did not start: {first!r}\n{log_file.read_text()}")
    return proc, first.split(" ", 1)[1].strip()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the devices publish scores")
    ap.add_argument("--burst", type=int, default=1000, help="alerts in the burst")
    ap.add_argument("--burst-at", type=float, default=30.0, help="seconds into the run")
    ap.add_argument("--duplicates", type=int, default=100, help="re-sent alerts in the burst (de-duplicated)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of scores not counted in the latency")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rng = np.random.default_rng(0)

    with tempfile.TemporaryDirectory(prefix="dashboard-load-") as tmp, MosquittoProcess(Path(tmp) / "broker") as broker:
        dash, url = start_dashboard(broker, Path(tmp) / "dashboard.db", Path(tmp) / "dashboard.log")
        try:
            sse = SSEClient(url)
            sse.start()
            if not sse.snapshot.wait(30):
                raise RuntimeError("no snapshot from /api/events")
            devices = [Device(broker, "plant1", f"dev{i:02d}") for i in range(args.devices)]
            t0 = time.time()
            cpu0 = proc_cpu_s(dash.pid)
            rss: list[int] = []
            burst_ids: list[str] = []
            burst_start = burst_published = None
            burst_done = threading.Event()

            def burst() -> None:
                nonlocal burst_start, burst_published
                ids = [str(uuid.uuid4()) for _ in range(args.burst)]
                burst_ids.extend(ids)
                burst_start = time.time()
                infos = [devices[i % len(devices)].alert(e, i) for i, e in enumerate(ids)]
                for _ in range(args.duplicates):  # at-least-once: some alerts arrive twice
                    i = int(rng.integers(args.burst))
                    infos.append(devices[i % len(devices)].alert(ids[i], i))
                for info in infos:
                    info.wait_for_publish(60)
                burst_published = time.time()
                burst_done.set()

            burst_thread = threading.Thread(target=burst, daemon=True)
            tick = 0
            next_rss = t0
            while time.time() - t0 < args.seconds:
                second = t0 + tick
                for i, dev in enumerate(devices):  # spread the 50 over the second
                    target = second + i / len(devices)
                    delay = target - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    dev.score(rng)
                    if time.time() >= next_rss:
                        rss.append(proc_mem_kb(dash.pid)[0])
                        next_rss += 0.5
                tick += 1
                if tick == int(args.burst_at) and not burst_thread.is_alive():
                    burst_thread.start()
            burst_done.wait(120)
            scores_sent = sum(d.scores_sent for d in devices)
            # drain: every alert's event, and the scores, reach the SSE client
            deadline = time.time() + 60
            while time.time() < deadline:
                if (len({d["event_id"] for _, d in sse.of("alert")}) >= args.burst
                        and len(sse.of("score")) >= scores_sent):
                    break
                time.sleep(0.1)
            time.sleep(1.0)  # anything late (duplicates would show here)
            wall = time.time() - t0
            cpu = proc_cpu_s(dash.pid) - cpu0
            rss_now, hwm = proc_mem_kb(dash.pid)
            health = json.loads(urlopen(url + "api/health", timeout=10).read())
            for d in devices:
                d.close()
        finally:
            dash.terminate()
            dash.wait(15)

    scores = sse.of("score")
    alerts = sse.of("alert")
    alert_lat = [1000 * (t - d["ts"]) for t, d in alerts]
    # scores published while the burst is in flight wait behind it: reported apart from the steady state
    burst_end = max((t for t, _ in alerts), default=0.0) + 1.0

    def in_burst(ts: float) -> bool:
        return burst_start is not None and burst_start <= ts <= burst_end

    score_lat = [1000 * (t - d["ts"]) for t, d in scores if d["ts"] - t0 > args.warmup and not in_burst(d["ts"])]
    burst_score_lat = [1000 * (t - d["ts"]) for t, d in scores if in_burst(d["ts"])]
    result = {
        "devices": args.devices, "seconds": args.seconds, "burst": args.burst, "duplicates_sent": args.duplicates,
        "scores": {"published": scores_sent, "dashboard_received": health["received"].get("score", 0),
                   "sse_events": len(scores),
                   "latency_ms": {"median": pct(score_lat, 50), "p99": pct(score_lat, 99), "max": max(score_lat)},
                   "during_burst": {"n": len(burst_score_lat), "median_ms": pct(burst_score_lat, 50),
                                    "p99_ms": pct(burst_score_lat, 99)}},
        "alerts": {"published_unique": args.burst, "published_total": args.burst + args.duplicates,
                   "dashboard_received": health["received"].get("alert", 0), "duplicates_dropped": health["duplicates"],
                   "stored": health["alerts_stored"], "sse_events": len(alerts),
                   "sse_unique": len({d["event_id"] for _, d in alerts}),
                   "missing": len(set(burst_ids) - {d["event_id"] for _, d in alerts}),
                   "latency_ms": {"median": pct(alert_lat, 50), "p99": pct(alert_lat, 99), "max": max(alert_lat)},
                   "burst_drain_s": (max(t for t, _ in alerts) - burst_start) if alerts and burst_start else None,
                   "burst_publish_s": (burst_published - burst_start) if burst_published and burst_start else None},
        "dropped_bad": health["dropped"], "slow_pages_dropped": health["slow_pages_dropped"],
        "dashboard": {"rss_mb_median": float(np.median(rss)) / 1024, "rss_mb_max": max(rss) / 1024,
                      "rss_mb_end": rss_now / 1024, "hwm_mb": hwm / 1024, "cpu_share_of_one_core": cpu / wall},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
