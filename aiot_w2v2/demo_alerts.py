"""Why the demo's edge stage raised as many alerts as it did: per clip, its windows over the threshold
and the alert that covers it.

The daemon plays the demo's clips back to back as one stream and debounces its decisions
(`aiot_edge.decision`): an alert needs k of the last n windows over the threshold, one alert stands
for a whole episode (until n windows in a row fall below the threshold), and a new one waits
`cooldown_s` of audio after the last. So six anomalous clips in a row are one incident and give one
alert, which reads like a miss unless the demo says so.

`clip_report` scores the same files with the same bundle (`aiot_edge.runtime.score_files`, the
daemon's scorer) and replays the same decision settings over the same stream clock, noting for every
window over the threshold what became of it: it raised alert i, it fell inside alert i's episode, the
cooldown after alert i held it back, or too few of the last n windows were over. It knows nothing about
torch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from aiot_edge.bundle import Bundle
from aiot_edge.config import DecisionConfig
from aiot_edge.decision import DecisionEngine
from aiot_edge.runtime import score_files, select_machine

# What became of a window over the threshold, strongest first: a clip is described by its strongest.
RAISED, EPISODE, COOLDOWN, DEBOUNCE = "raised", "episode", "cooldown", "debounce"
_RANK = {RAISED: 0, EPISODE: 1, COOLDOWN: 2, DEBOUNCE: 3}


@dataclass
class ClipOutcome:
    """One clip of the stream: how many windows were over the threshold and what became of them."""

    file: Path
    windows: int = 0
    over: int = 0
    max_score: float = float("-inf")
    outcome: str | None = None  # RAISED, EPISODE, COOLDOWN, DEBOUNCE; None when no window was over
    alert: int | None = None  # 1-based number of the alert that covers the clip (RAISED, EPISODE, COOLDOWN)
    raised_at: list[tuple[float, float]] = field(default_factory=list)  # windows (start, end s) that raised

    @property
    def label(self) -> str:
        """"anomaly" or "normal" from a DCASE file name, else "?"."""
        name = self.file.name
        return "anomaly" if name.startswith("anomaly") else "normal" if name.startswith("normal") else "?"

    def note(self, event: str, alert: int | None) -> None:
        if self.outcome is None or _RANK[event] < _RANK[self.outcome]:
            self.outcome, self.alert = event, alert


def clip_report(bundle: Path, files: list[Path], machine: str, machine_id: str,
                decision: DecisionConfig) -> tuple[list[ClipOutcome], float]:
    """Per clip outcome of replaying `decision` over `files` as the daemon's one stream; and the threshold."""
    b = Bundle.load(bundle, verify_sha256=False)
    threshold = select_machine(b, files[0], machine, machine_id).threshold
    engine = DecisionEngine(threshold, k=decision.k, n=decision.n, hysteresis=decision.hysteresis,
                            cooldown_s=decision.cooldown_s, critical_factor=decision.critical_factor)
    clips = {str(f): ClipOutcome(Path(f)) for f in files}
    recent: deque[bool] = deque(maxlen=decision.n)  # the engine's k-of-n history, mirrored to say why
    alerts, base, last_file = 0, 0.0, None
    for row in score_files(b, files, machine, machine_id):
        if last_file is not None and row["file"] != last_file:
            base += sf.info(last_file).duration  # the daemon's clock runs on over the files, back to back
        last_file = row["file"]
        clip = clips[row["file"]]
        score, over = float(row["score"]), bool(row["anomaly"])
        clip.windows += 1
        clip.max_score = max(clip.max_score, score)
        clip.over += over
        was_alerting = engine.alerting
        recent.append(over)
        event = engine.update(score, base + row["window_end"], row["window_start"], row["window_end"])
        if was_alerting and not engine.alerting:
            recent.clear()  # the engine empties its history when an episode clears
        if event is not None:
            alerts += 1
            clip.note(RAISED, alerts)
            clip.raised_at.append((row["window_start"], row["window_end"]))
        elif over and was_alerting:
            clip.note(EPISODE, alerts)
        elif over and sum(recent) >= decision.k:
            clip.note(COOLDOWN, alerts)
        elif over:
            clip.note(DEBOUNCE, None)
    return [clips[str(f)] for f in files], engine.threshold


def format_clip_report(clips: list[ClipOutcome], threshold: float, decision: DecisionConfig,
                       alerts_received: int) -> list[str]:
    """The lines the demo prints: the rule, one line per clip, and a sentence on the count."""
    faulty = [c for c in clips if c.label == "anomaly"]
    heard = sum(1 for c in faulty if c.over)
    covered = sum(1 for c in faulty if c.alert is not None)
    false_alarms = sum(1 for c in clips if c.label == "normal" and c.over)
    lines = [f"why {alerts_received} alert(s) for {heard} of {len(faulty)} anomalous clips with windows over the "
             f"threshold ({threshold:.4g}):",
             f"  the daemon hears the {len(clips)} clips back to back as one stream; an alert needs {decision.k} of "
             f"the last {decision.n} windows over the threshold,",
             f"  stands for its whole episode (until {decision.n} windows in a row are under it), and the next one "
             f"waits {decision.cooldown_s:g} s of audio",
             "  (edge config decision.k, decision.n, decision.cooldown_s: one alert per incident, not per clip)",
             f"  {'clip':<30} {'label':<8} {'windows over':>12} {'max score':>10}  alert"]
    for c in clips:
        lines.append(f"  {c.file.name:<30} {c.label:<8} {f'{c.over}/{c.windows}':>12} {c.max_score:>10.4g}  "
                     f"{_describe(c, decision)}")
    lines.append(f"  anomalous clips covered by an alert: {covered} of {len(faulty)}; normal clips with windows over "
                 f"the threshold: {false_alarms} of {len(clips) - len(faulty)}")
    return lines


def _describe(c: ClipOutcome, decision: DecisionConfig) -> str:
    if c.outcome == RAISED:
        spans = ", ".join(f"{a:g}-{b:g} s" for a, b in c.raised_at)
        return f"alert {c.alert}, raised on its window {spans}"
    if c.outcome == EPISODE:
        return f"alert {c.alert} (same episode, not yet {decision.n} windows under the threshold)"
    if c.outcome == COOLDOWN:
        return f"alert {c.alert} (cooldown: less than {decision.cooldown_s:g} s of audio after it)"
    if c.outcome == DEBOUNCE:
        return f"none (fewer than {decision.k} of the last {decision.n} windows over)"
    return "-"
