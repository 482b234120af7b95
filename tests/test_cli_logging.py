"""The command line's logging: our INFO lines show, third-party INFO (amqtt, transitions) only with --verbose."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from aiot_w2v2.cli import build_parser
from aiot_w2v2.logs import is_own_logger, setup_logging


@contextlib.contextmanager
def bare_root() -> Iterator[logging.Logger]:
    """The root logger without pytest's capture handlers (as in a fresh `aiot-w2v2` process), restored after.

    A context manager inside the test, not a fixture: pytest adds its handlers after fixtures are set up.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = []
    try:
        yield root
    finally:
        for h in root.handlers:
            h.close()
        root.handlers, root.level = handlers, level


@pytest.mark.parametrize("name, own", [("aiot_w2v2", True), ("aiot_edge.daemon", True), ("__main__", True),
                                       ("aiot_edgex", False), ("amqtt.broker", False), ("transitions.core", False)])
def test_own_loggers_are_the_project_packages_and_their_children(name: str, own: bool) -> None:
    assert is_own_logger(name) is own


def test_third_party_info_is_dropped_and_their_warnings_kept() -> None:
    out = io.StringIO()
    with bare_root():
        assert setup_logging(verbose=False, stream=out) is not None
        logging.getLogger("transitions.core").info("Entered state running")
        logging.getLogger("amqtt.broker").info("Listener 'default' bind to 127.0.0.1")
        logging.getLogger("amqtt.broker").warning("client vanished")
        logging.getLogger("aiot_edge.broker").info("embedded broker backend=amqtt")
        logging.getLogger("aiot_w2v2.demo").debug("not at INFO level")
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 3)[3] for line in lines] == [
        "amqtt.broker: client vanished", "aiot_edge.broker: embedded broker backend=amqtt"]


def test_verbose_shows_every_logger_from_debug() -> None:
    out = io.StringIO()
    with bare_root():
        setup_logging(verbose=True, stream=out)
        logging.getLogger("transitions.core").info("Entered state running")
        logging.getLogger("aiot_w2v2.demo").debug("details")
    text = out.getvalue()
    assert "transitions.core: Entered state running" in text and "aiot_w2v2.demo: details" in text


def test_an_existing_configuration_is_left_alone() -> None:
    theirs = logging.StreamHandler(io.StringIO())
    with bare_root() as root:
        root.addHandler(theirs)
        assert setup_logging(verbose=False) is None
        assert root.handlers == [theirs]


def _broker_log(verbose: bool) -> str:
    """stderr of a fresh process that sets up the CLI's logging and starts and stops the real amqtt broker."""
    code = ("import sys\n"
            "from aiot_w2v2.logs import setup_logging\n"
            f"setup_logging(verbose={verbose})\n"
            "from aiot_edge.broker import EmbeddedBroker\n"
            "with EmbeddedBroker() as broker:\n"
            "    assert broker.backend == 'amqtt', broker.backend\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_a_real_embedded_broker_is_quiet_unless_verbose() -> None:
    quiet, loud = _broker_log(verbose=False), _broker_log(verbose=True)
    # The broker's start and stop log ~10 INFO lines of amqtt and transitions (the demo showed ~30).
    assert " INFO amqtt" in loud and " INFO transitions" in loud
    assert "amqtt" not in quiet.replace("backend=amqtt", "") and "transitions" not in quiet
    assert "INFO aiot_edge.broker: embedded broker backend=amqtt" in quiet


def test_demo_takes_verbose_after_the_subcommand_and_before_it() -> None:
    parser = build_parser()
    assert parser.parse_args(["demo", "--verbose"]).verbose is True
    assert parser.parse_args(["-v", "demo"]).verbose is True
    assert parser.parse_args(["demo"]).verbose is False
