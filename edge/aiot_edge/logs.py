"""Structured logging for the daemon: `key=value` lines (default) or one JSON object per line.

Fields travel in `extra={"fields": {...}}`; both formatters print them after the message, so
`log.info("alert", extra=fields(event_id=..., score=...))` reads well in a terminal and in
`journalctl`, and parses with a regex or `jq`. Logs go to stderr (systemd's journal picks them up);
stdout stays free for `aiot-edge score` JSON lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = {"fields"}


def fields(**kv: Any) -> dict[str, dict[str, Any]]:
    """`extra=` argument carrying structured fields."""
    return {"fields": kv}


def escape_controls(text: str) -> str:
    """`text` with control characters written as escapes (`\\n`, `\\x1b`), so a value from outside
    (a file name with a newline) can never start a log line of its own or drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else _ESCAPES.get(c, f"\\x{ord(c):02x}" if ord(c) < 256
                                                                    else f"\\u{ord(c):04x}") for c in text)


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _kv_value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    if not text or any(c in text for c in ' "=') or not text.isprintable():
        return json.dumps(text)  # escapes every control character
    return text


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class KeyValueFormatter(logging.Formatter):
    """`2026-01-01T00:00:00.000Z INFO aiot_edge.daemon: message k=v k2="v 2"`."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, f"{record.name}:", escape_controls(record.getMessage())]
        for key, value in getattr(record, "fields", {}).items():
            parts.append(f"{key}={_kv_value(value)}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """`{"ts": ..., "level": ..., "logger": ..., "msg": ..., <fields>}` per line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname, "logger": record.name,
                                "msg": record.getMessage()}
        data.update(getattr(record, "fields", {}))
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def setup_logging(level: str = "INFO", fmt: str = "kv") -> None:
    """Route the root logger to stderr with the chosen formatter (replaces earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # paho's debug chatter (every PINGREQ) and the embedded broker's state machine are noise
    for name in ("aiot_edge.paho", "amqtt", "transitions"):
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
