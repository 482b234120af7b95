"""Logging for the `aiot-w2v2` command line: our own loggers at INFO, third-party ones at WARNING.

Libraries the pipeline drives log their routine at INFO: the embedded MQTT broker (`amqtt.broker`,
`transitions.core`: about 30 lines around the demo's edge stage), the dashboard's web server
(`uvicorn.error`), the ONNX tools. Those lines say nothing a user of the command needs, and they bury
the lines that do. So, unless `--verbose`, a record from a logger outside this project reaches the
console only at WARNING and above; with `--verbose` everything from DEBUG up does.

The filter sits on the console handler rather than on each library's logger, so a library we have
not met yet is quiet as well, and the libraries' own loggers and handlers are left as they are.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

# Loggers of this project: `aiot_w2v2` (this package), `aiot_edge` (the edge package it drives), and
# `__main__` for scripts run with `python -m`.
OWN_LOGGERS = ("aiot_w2v2", "aiot_edge", "__main__")

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def is_own_logger(name: str) -> bool:
    """True for `aiot_w2v2`, `aiot_edge`, `__main__` and their children (`aiot_edge.daemon`), not `aiot_edgex`."""
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class ThirdPartyAtWarning(logging.Filter):
    """Let through every record of this project's loggers, and others' only at WARNING and above."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or is_own_logger(record.name)


def setup_logging(verbose: bool = False, stream: TextIO | None = None) -> logging.Handler | None:
    """Give the root logger a console handler for the command line and return it.

    `verbose`: DEBUG from every logger; otherwise INFO from ours and WARNING from third-party ones.
    `stream`: where the handler writes (stderr by default). Like `logging.basicConfig`, it does nothing
    and returns None when the root logger has handlers already (a test runner's, or those of an
    application that calls `aiot_w2v2.cli.main`): their configuration is theirs.
    """
    root = logging.getLogger()
    if root.handlers:
        return None
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    if not verbose:
        handler.addFilter(ThirdPartyAtWarning())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler
