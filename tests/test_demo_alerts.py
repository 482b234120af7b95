"""The demo's per-clip explanation of its alerts agrees with what the real daemon did, and says why.

The tiny test bundle scores a 0.1 s window by its peak (threshold 0.7): a clip of ten windows is
written from a pattern such as "0011100000", where 1 is a loud (over) window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from aiot_edge.config import DecisionConfig
from edge_fixtures import LOUD, WINDOW, tiny_bundle_fixture, write_wav  # noqa: F401

from aiot_w2v2.demo_alerts import COOLDOWN, DEBOUNCE, EPISODE, RAISED, clip_report, format_clip_report

# name -> pattern; played in this order as one stream, 1.0 s per clip. With k=3 of n=5 and a 2 s cooldown:
STREAM = {
    "normal_id_00_00000000.wav": "0000000000",  # nothing over
    "anomaly_id_00_00000000.wav": "0011111111",  # 3 of 5 over at 0.4-0.5 s: alert 1
    "anomaly_id_00_00000001.wav": "1111111111",  # alert 1 has not cleared: same episode
    "anomaly_id_00_00000002.wav": "0000000000",  # 5 windows under: the episode clears
    "anomaly_id_00_00000003.wav": "1110000000",  # 2.8 s after alert 1: alert 2
    "anomaly_id_00_00000004.wav": "1111100000",  # 0.8-1.2 s after alert 2: held back by the cooldown
    "anomaly_id_00_00000005.wav": "0100000001",  # single windows: fewer than 3 of 5
}
DECISION = DecisionConfig(k=3, n=5, cooldown_s=2.0)
OVERRIDES = {"decision.k": 3, "decision.n": 5, "decision.cooldown_s": 2.0}


def _clips(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    quiet, loud = np.zeros(WINDOW, np.float32), np.full(WINDOW, LOUD, np.float32)
    return [write_wav(folder / name, np.concatenate([loud if c == "1" else quiet for c in pattern]))
            for name, pattern in STREAM.items()]


def test_every_clip_gets_the_reason_for_its_alert_or_its_absence(tmp_path: Path, tiny_bundle: Path) -> None:
    clips, threshold = clip_report(tiny_bundle, _clips(tmp_path), "fan", "id_00", DECISION)
    assert threshold == 0.7
    assert [(c.outcome, c.alert) for c in clips] == [
        (None, None), (RAISED, 1), (EPISODE, 1), (None, None), (RAISED, 2), (COOLDOWN, 2), (DEBOUNCE, None)]
    assert [c.over for c in clips] == [p.count("1") for p in STREAM.values()]
    assert clips[1].raised_at == [(0.4, 0.5)] and clips[4].raised_at == [(0.2, 0.3)]

    lines = format_clip_report(clips, threshold, DECISION, alerts_received=2)
    text = "\n".join(lines)
    assert lines[0] == "why 2 alert(s) for 5 of 6 anomalous clips with windows over the threshold (0.7):"
    assert "3 of the last 5 windows" in text and "waits 2 s of audio" in text
    by_clip = {line.split()[0]: line for line in lines if line.strip().endswith(("-", ")", " s"))
               and line.split()[0].endswith(".wav")}
    assert by_clip["anomaly_id_00_00000001.wav"].endswith("alert 1 (same episode, not yet 5 windows under the "
                                                          "threshold)")
    assert "10/10" in by_clip["anomaly_id_00_00000001.wav"]
    assert by_clip["anomaly_id_00_00000004.wav"].endswith("alert 2 (cooldown: less than 2 s of audio after it)")
    assert by_clip["anomaly_id_00_00000005.wav"].endswith("none (fewer than 3 of the last 5 windows over)")
    assert lines[-1] == ("  anomalous clips covered by an alert: 4 of 6; normal clips with windows over the "
                         "threshold: 0 of 1")


def test_the_demo_stage_prints_an_explanation_that_matches_the_daemon(tmp_path: Path, tiny_bundle: Path,
                                                                      capsys) -> None:
    from aiot_w2v2.edge_demo import run_edge_stage

    # A local mosquitto when installed, else the embedded amqtt broker: the stage runs either way.
    files = _clips(tmp_path / "clips")
    alerts = run_edge_stage(tiny_bundle, files, "fan", "id_00", timeout_s=60, overrides=OVERRIDES)
    printed = capsys.readouterr().out
    # What the real daemon published: alert 1 on the first anomalous clip, alert 2 on the fourth.
    assert [(Path(a["source"]).name, a["window_start"]) for a in alerts] == [
        ("anomaly_id_00_00000000.wav", 0.4), ("anomaly_id_00_00000003.wav", 0.2)]
    assert "why 2 alert(s) for 5 of 6 anomalous clips" in printed
    assert "anomaly_id_00_00000000.wav" in printed and "alert 1, raised on its window 0.4-0.5 s" in printed
    assert "alert 2, raised on its window 0.2-0.3 s" in printed
