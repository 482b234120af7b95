"""aiot_edge.decision: k-of-n debounce, hysteresis, cooldown and severity, table-driven."""

from __future__ import annotations

import itertools
import uuid

import pytest
from aiot_edge.decision import DecisionEngine, Event, event_id


def counter_ids():
    c = itertools.count()
    return lambda: f"event-{next(c)}"


def run(engine: DecisionEngine, scores: list[float], dt: float = 1.0) -> list[tuple[int, Event]]:
    """Feed scores at ts = i * dt; return (window index, event) for every event."""
    out = []
    for i, s in enumerate(scores):
        ev = engine.update(s, ts=i * dt, window_start=i * dt, window_end=i * dt + 2.0)
        if ev is not None:
            out.append((i, ev))
    return out


# (name, engine kwargs, scores, window indices that raise events); threshold is 1.0 throughout
CASES = [
    ("plain threshold", dict(), [0, 2, 2, 0, 2], [1, 4]),
    ("score equal to threshold is not over", dict(), [1.0, 1.0, 1.01], [2]),
    ("one episode, one event", dict(), [2, 2, 2, 2], [0]),
    ("2 of 3: isolated spikes ignored", dict(k=2, n=3), [2, 0, 0, 2, 0, 0, 2], []),
    ("2 of 3: triggers on the second over within 3", dict(k=2, n=3), [2, 0, 0, 2, 0, 2, 2, 2], [5]),
    ("3 of 3 needs three in a row", dict(k=3, n=3), [2, 2, 0, 2, 2, 2], [5]),
    ("no hysteresis: clears below threshold", dict(), [2, 0.8, 2, 0.4, 2], [0, 2, 4]),
    ("hysteresis 0.5: 0.8 does not clear", dict(hysteresis=0.5), [2, 0.8, 2, 0.4, 2], [0, 4]),
    ("hysteresis: exactly T-h does not clear", dict(hysteresis=0.5), [2, 0.5, 2, 0.49, 2], [0, 4]),
    ("clear needs n consecutive windows below T-h", dict(k=1, n=2, hysteresis=0.5),
     [2, 0.4, 0.8, 0.4, 0.4, 2], [0, 5]),
    ("after clearing, k-of-n starts afresh", dict(k=2, n=2), [2, 2, 0, 0, 2, 0, 2, 2], [1, 7]),
    ("cooldown defers, does not drop", dict(cooldown_s=10), [2, 0] + [2] * 10, [0, 10]),
    ("cooldown: short blip inside it is dropped", dict(cooldown_s=10), [2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 2],
     [0, 11]),
    ("cooldown measured from the previous event", dict(cooldown_s=3), [2, 0, 0, 2, 0, 2], [0, 3]),
    # the cooldown ends at window 7, which is quiet though 2 of the last 3 are over: no event there
    # (an alert whose score is below its threshold), and the episode is over by the next over window
    ("cooldown: no event on a quiet window", dict(k=2, n=3, cooldown_s=6), [2, 2, 0, 0, 0, 2, 2, 0, 0, 2, 0],
     [1]),
    ("cooldown: the deferred event fires on the next over window", dict(k=2, n=3, cooldown_s=6),
     [2, 2, 0, 0, 0, 2, 2, 0, 2, 0], [1, 8]),
]


@pytest.mark.parametrize(("name", "kwargs", "scores", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decision_table(name: str, kwargs: dict, scores: list[float], expected: list[int]) -> None:
    engine = DecisionEngine(1.0, id_factory=counter_ids(), **kwargs)
    assert [i for i, _ in run(engine, scores)] == expected


@pytest.mark.parametrize(("threshold", "kwargs", "score", "severity"), [
    (2.0, {}, 2.5, "warning"),
    (2.0, {}, 3.0, "warning"),  # exactly 1.5 x is not above it
    (2.0, {}, 3.1, "critical"),
    (2.0, {"critical_factor": 2.0}, 3.5, "warning"),
    (-2.0, {}, -1.5, "warning"),  # negative threshold: level = T + 0.5 |T| = -1
    (-2.0, {}, -0.5, "critical"),
    (2.0, {"critical_threshold": 2.2}, 2.3, "critical"),
])
def test_severity(threshold: float, kwargs: dict, score: float, severity: str) -> None:
    ev = DecisionEngine(threshold, **kwargs).update(score, ts=0.0)
    assert ev is not None and ev.severity == severity


def test_event_fields_are_deterministic() -> None:
    def events() -> list[dict]:
        engine = DecisionEngine(1.0, k=2, n=3, id_factory=counter_ids())
        return [ev.to_dict() for _, ev in run(engine, [0, 2, 0, 2, 0, 0, 0, 2, 2])]

    first = events()
    assert first == events()
    assert first == [{"event_id": "event-0", "ts": 3.0, "score": 2.0, "threshold": 1.0, "severity": "critical",
                      "window_start": 3.0, "window_end": 5.0},
                     {"event_id": "event-1", "ts": 8.0, "score": 2.0, "threshold": 1.0, "severity": "critical",
                      "window_start": 8.0, "window_end": 10.0}]  # cleared by 4, 5, 6; 7 + 8 trigger again


def test_default_ids_are_uuid4() -> None:
    import uuid

    ev = DecisionEngine(0.0).update(1.0, ts=0.0)
    assert ev is not None and uuid.UUID(ev.event_id).version == 4


def test_state_and_reset() -> None:
    engine = DecisionEngine(1.0)
    assert engine.update(2.0, 0.0) is not None and engine.alerting
    engine.reset()
    assert not engine.alerting
    assert engine.update(2.0, 0.5) is not None  # reset also forgets the cooldown and history


@pytest.mark.parametrize("kwargs", [dict(k=3, n=2), dict(k=0), dict(hysteresis=-1), dict(cooldown_s=-1),
                                    dict(critical_factor=0.5), dict(threshold=float("nan"))])
def test_invalid_settings(kwargs: dict) -> None:
    kwargs = {"threshold": 1.0, **kwargs}
    with pytest.raises(ValueError):
        DecisionEngine(**kwargs)


def test_non_finite_score_is_an_error() -> None:
    with pytest.raises(ValueError, match="finite"):
        DecisionEngine(1.0).update(float("nan"), ts=0.0)


def test_event_id_is_a_uuid5_of_bundle_source_window_and_machine() -> None:
    base = dict(bundle_sha256="ab" * 32, source="/data/a.wav:1000:123", window_start=16000, machine="fan/id_00")
    first = event_id(**base)
    assert first == event_id(**base) and uuid.UUID(first).version == 5
    for key, other in (("bundle_sha256", "cd" * 32), ("source", "/data/a.wav:1000:124"), ("window_start", 16001),
                       ("machine", "fan/id_02")):
        assert event_id(**{**base, key: other}) != first, key
