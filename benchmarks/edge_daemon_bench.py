"""The edge daemon live: alert latency, resident memory and CPU share, on a real mosquitto.

`aiot-edge run --source stdin` runs as a child process with a bundle (one machine) and a local
mosquitto; this script writes raw PCM to its stdin at real-time pace (0.1 s chunks), so windows come
at the bundle's hop exactly as from a microphone, and a paho subscriber (QoS 1) receives the alerts.

The audio repeats one cycle: a normal test clip's first `--clip-s` seconds, then `--noise-s` seconds
of white noise. The copy of the bundle used here has its decision threshold set to `--threshold`,
above the clip's windows and below the noise's, so that every cycle raises exactly one alert
(k = n = 1, no cooldown); the latency does not depend on where the threshold is.

Measured:
- alert latency = time the subscriber received the alert - the alert's `ts`. The daemon takes `ts`
  (`time.time()`, ms resolution) when it raises the alert, right after `Scorer.score` returned for
  that window, before the spool insert (SQLite, fsync) and the publish; both clocks are this machine's.
  Also the end-to-end time from writing the window's last sample to receiving the alert (chunking,
  windowing, inference, spool, MQTT).
- resident memory: VmRSS of the daemon process every 0.5 s (median, max) and VmHWM at the end;
- CPU share of one core: (utime + stime) of the daemon process over the measured span / wall time,
  from /proc/<pid>/stat, after a warm-up.

    python benchmarks/edge_daemon_bench.py --bundle BUNDLE --data /tmp/synth --seconds 180 \\
        --out benchmarks/results/edge_daemon.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import soundfile as sf
from aiot_edge.broker import MosquittoProcess
from aiot_edge.bundle import Bundle, write_bundle_json
from paho.mqtt.enums import CallbackAPIVersion
from procstat import proc_cpu_s, proc_mem_kb

REPO = Path(__file__).resolve().parents[1]
CHUNK_S = 0.1


def cycle_audio(data: Path, machine: str, machine_id: str, clip_s: float, noise_s: float, sr: int) -> np.ndarray:
    clip = sorted((data / machine / "test").glob(f"normal_{machine_id}_*.wav"))[0]
    x, rate = sf.read(clip, dtype="float32")
    if rate != sr or x.ndim != 1:
        raise SystemExit(f"{clip}: expected mono {sr} Hz")
    noise = 0.05 * np.random.default_rng(0).standard_normal(int(noise_s * sr)).astype(np.float32)
    return np.concatenate([x[: int(clip_s * sr)], noise])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--data", required=True, help="DCASE-layout folder: a normal test clip of the machine is used")
    p.add_argument("--machine", default="fan")
    p.add_argument("--machine-id", default="id_00")
    p.add_argument("--threshold", type=float, default=30.0, help="decision threshold of the benchmark's bundle copy")
    p.add_argument("--clip-s", type=float, default=3.0)
    p.add_argument("--noise-s", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=180.0, help="audio streamed (= wall time)")
    p.add_argument("--warmup-s", type=float, default=10.0, help="excluded from CPU share and RSS")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads of the daemon")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="edge-daemon-bench-"))
    bundle = tmp / "bundle"
    shutil.copytree(args.bundle, bundle)
    b = Bundle.load(bundle)
    spec = b.machine(args.machine, args.machine_id)
    raw = json.loads((bundle / "bundle.json").read_text())
    raw["machines"][spec.key]["thresholds"][spec.decision_scorer] = args.threshold
    write_bundle_json(bundle, raw)
    sr = b.sample_rate
    cycle = cycle_audio(Path(args.data), args.machine, args.machine_id, args.clip_s, args.noise_s, sr)
    n_total = int(args.seconds * sr)
    stream = np.tile(cycle, n_total // len(cycle) + 1)[:n_total]
    pcm = (np.clip(stream, -1, 1) * 32767).astype("<i2").tobytes()

    broker = MosquittoProcess(tmp / "mosquitto").start()
    received: list[tuple[float, dict[str, Any]]] = []
    subscribed = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="edge-daemon-bench")
    sub.on_connect = lambda c, u, f, reason, prop: c.subscribe("aiot/bench/d1/alert", qos=1)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, msg: received.append((time.time(), json.loads(msg.payload)))
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    if not subscribed.wait(10):
        raise SystemExit("the subscriber could not subscribe")

    log_path = tmp / "daemon.log"
    cmd = [sys.executable, "-m", "aiot_edge.cli", "run", "--bundle", str(bundle), "--source", "stdin",
           "--input-rate", str(sr), "--machine", args.machine, "--machine-id", args.machine_id,
           "--broker", f"mqtt://{broker.host}:{broker.port}", "--site", "bench", "--device", "d1",
           "--spool", str(tmp / "spool.db"), "--once", "--set", f"threads={args.threads}",
           "--set", "decision.k=1", "--set", "decision.n=1", "--set", "decision.cooldown_s=0",
           "--set", "telemetry_every_s=10", "--set", "health_every_s=0"]
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=log, stdout=subprocess.DEVNULL, cwd=REPO,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert daemon.stdin is not None
    # Wait until the daemon is up (its status goes online) so start-up is not counted as streaming time.
    time.sleep(0.5)
    while "aiot-edge starting" not in log_path.read_text(errors="replace"):
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited: {log_path.read_text()[-2000:]}")
        time.sleep(0.05)
    time.sleep(1.0)

    chunk = int(CHUNK_S * sr) * 2  # bytes of s16le mono
    written_at = np.zeros(n_total // int(CHUNK_S * sr) + 1)  # wall time each chunk was written
    rss: list[int] = []
    t0 = time.time()
    cpu0 = wall0 = None
    next_rss = t0
    for k in range(0, len(pcm), chunk):
        target = t0 + (k // chunk) * CHUNK_S
        delay = target - time.time()
        if delay > 0:
            time.sleep(delay)
        daemon.stdin.write(pcm[k: k + chunk])
        daemon.stdin.flush()
        written_at[k // chunk] = time.time()
        now = time.time()
        if cpu0 is None and now - t0 >= args.warmup_s:
            cpu0, wall0 = proc_cpu_s(daemon.pid), now
        if now >= next_rss:
            next_rss = now + 0.5
            if now - t0 >= args.warmup_s:
                rss.append(proc_mem_kb(daemon.pid)[0])
    cpu1, wall1 = proc_cpu_s(daemon.pid), time.time()
    hwm = proc_mem_kb(daemon.pid)[1]
    time.sleep(2.0)  # the last alerts
    daemon.stdin.close()
    code = daemon.wait(60)
    sub.loop_stop()
    sub.disconnect()
    broker.stop()

    lat = np.array([(t - a["ts"]) * 1e3 for t, a in received])
    chunk_samples = int(CHUNK_S * sr)
    e2e = np.array([(t - written_at[min(len(written_at) - 1, int(round(a["window_end"] * sr)) // chunk_samples - 1)])
                    * 1e3 for t, a in received])
    cycles = args.seconds / (args.clip_s + args.noise_s)
    result = dict(
        bundle=str(args.bundle), quantization=b.quantization, window_s=b.window_s, hop_s=b.hop_s,
        columns=len(b.columns), seconds=args.seconds, threads=args.threads, exit_code=code,
        alerts=len(received), cycles=round(cycles, 1),
        alert_latency_ms=dict(median=float(np.median(lat)), p99=float(np.percentile(lat, 99)), max=float(lat.max()),
                              min=float(lat.min())) if len(lat) else None,
        end_to_end_ms=dict(median=float(np.median(e2e)), p99=float(np.percentile(e2e, 99)),
                           max=float(e2e.max())) if len(e2e) else None,
        rss_mb=dict(median=float(np.median(rss)) / 1024, max=float(max(rss)) / 1024, hwm=hwm / 1024),
        cpu_share_of_one_core=(cpu1 - cpu0) / (wall1 - wall0) if cpu0 is not None else None,
        date=time.strftime("%Y-%m-%d"), cpus=os.cpu_count(),
    )
    print(json.dumps(result, indent=2))
    if code != 0:
        print(log_path.read_text(errors="replace")[-3000:], file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
