"""aiot_edge.logs: key=value and JSON lines; one record is always one line, whatever its values hold."""

from __future__ import annotations

import json
import logging

from aiot_edge.logs import JsonFormatter, KeyValueFormatter, fields


def _record(msg: str, *args: object, **kv: object) -> logging.LogRecord:
    record = logging.LogRecord("aiot_edge.test", logging.WARNING, __file__, 1, msg, args, None)
    record.fields = kv
    return record


def test_control_characters_cannot_forge_a_log_line() -> None:
    # A file named "x.wav\n2026-01-01T00:00:00.000Z ERROR forged" once printed two log lines.
    name = "x.wav\n2026-01-01T00:00:00.000Z ERROR aiot_edge.daemon: forged\x1b[2K\r"
    line = KeyValueFormatter().format(_record("skipping broken file %s", name, source=name))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "x.wav\\n2026" in line and "\\x1b" in line
    assert line.startswith("20") and " WARNING aiot_edge.test: skipping broken file x.wav" in line
    data = json.loads(JsonFormatter().format(_record("skipping broken file %s", name, source=name)))
    assert data["source"] == name and "\n" not in JsonFormatter().format(_record("%s", name))


def test_fields_are_printed_as_key_value() -> None:
    line = KeyValueFormatter().format(_record("alert", score=1.5, source="a b.wav", **fields()["fields"]))
    assert line.endswith('alert score=1.5 source="a b.wav"')
