"""From window scores to alert events: k-of-n debounce, hysteresis, cooldown, severity.

Pure logic: no clock, no I/O, no randomness of its own. Timestamps come in with each score and the
event id factory is injectable, so the same inputs always give the same events.

The rules, per window (score s at time ts, threshold T):

- A window is *over* when s > T.
- **Trigger (k of n).** While idle, the engine alerts when at least `k` of the last `n` windows
  (this one included) are over. It emits one `Event` for the window that completes the condition
  and enters the *alerting* state. One episode gives one event, however long it lasts.
- **Cooldown.** A trigger less than `cooldown_s` seconds after the previous event's `ts` is
  deferred, not dropped: the engine stays idle and re-checks the k-of-n condition on every
  following over window, so an anomaly that persists past the cooldown still raises its event.
  An event is always raised on a window that is itself over (its score is above the threshold
  it reports), never on a quiet window whose history still holds k over windows.
- **Hysteresis (clear).** While alerting, the state clears after `n` consecutive windows with
  s < T - hysteresis. A score between T - hysteresis and T neither raises a new event nor counts
  towards clearing (it resets the run of clear windows). With hysteresis = 0 and n = 1 the state
  clears on the first window with s < T. Clearing empties the k-of-n history, so a new episode
  needs k fresh over windows.
- **Severity.** "critical" when the triggering score exceeds the critical level, else "warning".
  The critical level is `critical_threshold` when given, else T + (critical_factor - 1) * |T|
  (that is T * critical_factor for a positive threshold; 1.5 x by default).
"""

from __future__ import annotations

import math
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["warning", "critical"]


# Namespace of alert event ids (a fixed, random UUID: changing it changes every id ever derived).
EVENT_NAMESPACE = uuid.UUID("6b1f3c2e-9d4a-5e07-8c61-2f0a9b7d4e15")


def _uuid4() -> str:
    return str(uuid.uuid4())


def event_id(bundle_sha256: str, source: str, window_start: int, machine: str) -> str:
    """The alert's id: a UUID 5 of (bundle sha256, source file identity, window start in samples, machine).

    The same window of the same file scored with the same bundle for the same machine always gets
    the same id, so an alert replayed after a crash is recognisable as the same event
    (ARCHITECTURE.md 4.5). `source` should identify the file's content, e.g. path, size and mtime.
    """
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{bundle_sha256}\n{source}\n{int(window_start)}\n{machine}"))


@dataclass(frozen=True)
class Event:
    """One alert: what the daemon spools and publishes (it adds device, machine, scorer, model)."""

    event_id: str  # UUID, so consumers can de-duplicate at-least-once delivery (the daemon uses `event_id()`)
    ts: float  # timestamp of the triggering window, as passed to `update`
    score: float  # the triggering window's score
    threshold: float
    severity: Severity
    window_start: float | None
    window_end: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with the field names above."""
        return asdict(self)


class DecisionEngine:
    """Debounced threshold decisions over a sequence of window scores (see the module docstring)."""

    def __init__(
        self,
        threshold: float,
        k: int = 1,
        n: int = 1,
        hysteresis: float = 0.0,
        cooldown_s: float = 0.0,
        critical_factor: float = 1.5,
        critical_threshold: float | None = None,
        id_factory: Callable[[], str] = _uuid4,
    ):
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}")
        if not 1 <= k <= n:
            raise ValueError(f"need 1 <= k <= n, got k={k} n={n}")
        if hysteresis < 0 or cooldown_s < 0:
            raise ValueError(f"hysteresis and cooldown_s must be >= 0, got {hysteresis}, {cooldown_s}")
        if critical_factor < 1:
            raise ValueError(f"critical_factor must be >= 1, got {critical_factor}")
        self.threshold = float(threshold)
        self.k, self.n = int(k), int(n)
        self.hysteresis = float(hysteresis)
        self.cooldown_s = float(cooldown_s)
        self.critical_level = (float(critical_threshold) if critical_threshold is not None
                               else self.threshold + (critical_factor - 1.0) * abs(self.threshold))
        self._id_factory = id_factory
        self.reset()

    def reset(self) -> None:
        """Back to idle with an empty history; the cooldown is forgotten too."""
        self._over: deque[bool] = deque(maxlen=self.n)
        self._alerting = False
        self._clear_run = 0
        self._last_event_ts: float | None = None

    @property
    def alerting(self) -> bool:
        """True between an event and the window that clears it."""
        return self._alerting

    def update(self, score: float, ts: float, window_start: float | None = None,
               window_end: float | None = None) -> Event | None:
        """Feed one window's score; returns an `Event` when this window triggers an alert, else None."""
        if not math.isfinite(score):
            raise ValueError(f"score must be finite, got {score}")
        score = float(score)
        self._over.append(score > self.threshold)

        if self._alerting:
            if score < self.threshold - self.hysteresis:
                self._clear_run += 1
                if self._clear_run >= self.n:
                    self._alerting = False
                    self._clear_run = 0
                    self._over.clear()
            else:
                self._clear_run = 0
            return None

        if not self._over[-1] or sum(self._over) < self.k:
            return None
        if self._last_event_ts is not None and ts - self._last_event_ts < self.cooldown_s:
            return None  # deferred: re-checked on the next window
        self._alerting = True
        self._clear_run = 0
        self._last_event_ts = float(ts)
        severity: Severity = "critical" if score > self.critical_level else "warning"
        return Event(event_id=self._id_factory(), ts=float(ts), score=score, threshold=self.threshold,
                     severity=severity, window_start=window_start, window_end=window_end)
