"""Parse and check the MQTT messages the dashboard reads (ARCHITECTURE.md 4.5, a contract).

Every message comes from the network, so nothing is trusted: a payload that is too big, not UTF-8,
not JSON, lacks a field or has a field of the wrong type raises `PayloadError` with a short `reason`
(the subscriber counts messages per reason and drops them). Strings are length-capped here, not
escaped: escaping is the page's job (it only ever writes them with `textContent`).

Topics are `aiot/<site>/<device>/<kind>` with kind `status`, `score`, `alert` or `ack`; the site and
device of a message are taken from its topic, the only part the broker's ACL can vouch for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

MAX_PAYLOAD_BYTES = 64 * 1024  # an alert is ~400 bytes; anything this big is a mistake or an attack
MAX_TEXT = 512  # longest string kept from a payload (file paths are the long ones)
KINDS = ("status", "score", "alert", "ack")


class PayloadError(ValueError):
    """A message the dashboard cannot use; `reason` is a short key for the bad-payload counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class TopicParts:
    site: str
    device: str
    kind: str


@dataclass(frozen=True)
class Score:
    """`{ts, scores, window_s}` telemetry; the optional keys, when a daemon sends them, name the series."""

    ts: float
    scores: dict[str, float]
    window_s: float | None
    machine: str | None = None
    machine_id: str | None = None
    scorer: str | None = None
    threshold: float | None = None
    model: str | None = None


@dataclass(frozen=True)
class Alert:
    event_id: str
    device: str
    machine: str
    ts: float
    score: float
    threshold: float
    scorer: str
    model: str
    severity: str
    window_start: float
    window_end: float
    machine_id: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class Ack:
    event_id: str
    ts: float
    by: str


def parse_topic(topic: str) -> TopicParts:
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "aiot" or parts[3] not in KINDS or not parts[1] or not parts[2]:
        raise PayloadError("topic", f"not aiot/<site>/<device>/<{'|'.join(KINDS)}>: {topic[:MAX_TEXT]!r}")
    return TopicParts(parts[1][:MAX_TEXT], parts[2][:MAX_TEXT], parts[3])


def _text(raw: bytes) -> str:
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError("too_big", f"{len(raw)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PayloadError("not_utf8", str(err)) from err


def _object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(_text(raw))
    except json.JSONDecodeError as err:
        raise PayloadError("not_json", str(err)) from err
    except RecursionError as err:  # deeply nested arrays: json recurses once per level
        raise PayloadError("not_json", "nested too deeply") from err
    if not isinstance(value, dict):
        raise PayloadError("not_object", f"expected a JSON object, got {type(value).__name__}")
    return value


def _number(obj: dict[str, Any], key: str, required: bool = True) -> float | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise PayloadError("missing_field", key)
        return None
    # bool is an int in Python; true/false is not a score
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PayloadError("wrong_type", f"{key} must be a finite number, got {str(value)[:40]!r}")
    return float(value)


def _string(obj: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise PayloadError("missing_field", key)
        return None
    if not isinstance(value, str):
        raise PayloadError("wrong_type", f"{key} must be a string, got {type(value).__name__}")
    return value[:MAX_TEXT]


def parse_status(raw: bytes) -> str:
    """`online` or `offline` (plain text, as the daemon and its last will publish it)."""
    text = _text(raw).strip()
    if text not in ("online", "offline"):
        raise PayloadError("bad_status", f"expected online/offline, got {text[:40]!r}")
    return text


def parse_score(raw: bytes) -> Score:
    obj = _object(raw)
    scores = obj.get("scores")
    if scores is None:
        raise PayloadError("missing_field", "scores")
    if not isinstance(scores, dict) or not scores or len(scores) > 64:
        raise PayloadError("wrong_type", "scores must be an object of 1-64 scorer: number")
    values: dict[str, float] = {}
    for name, value in scores.items():
        number = _number({"v": value}, "v")
        assert number is not None
        values[str(name)[:MAX_TEXT]] = number
    ts = _number(obj, "ts")
    assert ts is not None
    return Score(ts=ts, scores=values, window_s=_number(obj, "window_s", required=False),
                 machine=_string(obj, "machine", False), machine_id=_string(obj, "machine_id", False),
                 scorer=_string(obj, "scorer", False), threshold=_number(obj, "threshold", False),
                 model=_string(obj, "model", False))


def parse_alert(raw: bytes) -> Alert:
    obj = _object(raw)
    event_id = _string(obj, "event_id")
    assert event_id is not None
    if not event_id or len(event_id) > 128:
        raise PayloadError("wrong_type", "event_id must be 1-128 characters")
    strings = {k: _string(obj, k) for k in ("device", "machine", "scorer", "model", "severity")}
    numbers = {k: _number(obj, k) for k in ("ts", "score", "threshold", "window_start", "window_end")}
    return Alert(event_id=event_id, **strings, **numbers,  # type: ignore[arg-type]
                 machine_id=_string(obj, "machine_id", False), source=_string(obj, "source", False))


def parse_ack(raw: bytes) -> Ack:
    obj = _object(raw)
    event_id, by, ts = _string(obj, "event_id"), _string(obj, "by"), _number(obj, "ts")
    assert event_id is not None and by is not None and ts is not None
    if not event_id or len(event_id) > 128:
        raise PayloadError("wrong_type", "event_id must be 1-128 characters")
    return Ack(event_id=event_id, ts=ts, by=by)
