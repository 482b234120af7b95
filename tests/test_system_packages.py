"""`make test` says how many tests were skipped for a missing system package, and which (system_packages.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from system_packages import missing_system_package

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _pytest(args: list[str], cwd: Path, pythonpath: list[Path]) -> str:
    """Output of a separate pytest run (its own terminal summary), with `pythonpath` first on sys.path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in pythonpath))
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_reason_names_the_package_and_how_to_install_it() -> None:
    assert missing_system_package("chromium", "chromium-driver", needed_for="a real browser") == (
        "missing system package: chromium, chromium-driver (a real browser; apt-get install chromium "
        "chromium-driver; .ci/run installs it)")


def test_summary_counts_and_lists_the_tests_per_package(tmp_path: Path) -> None:
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "from system_packages import missing_system_package as missing\n"
        "@pytest.mark.skipif(True, reason=missing('mosquitto', needed_for='a broker'))\n"
        "def test_marked(): pass\n"
        "@pytest.fixture\n"
        "def browser():\n"
        "    pytest.skip(missing('chromium', 'chromium-driver', needed_for='a browser'))\n"
        "def test_in_a_fixture(browser): pass\n"
        "def test_inside(): pytest.skip(missing('mosquitto', needed_for='a broker'))\n"
        "def test_other_skip(): pytest.skip('needs root')\n"
        "def test_passes(): pass\n")
    out = _pytest(["-p", "system_packages", "test_x.py"], tmp_path, [TESTS])
    summary = out[out.index("skipped for a missing system package"):]
    assert "3 test(s) skipped for a missing system package" in out
    assert ("chromium, chromium-driver: 1 test(s) skipped (apt-get install chromium chromium-driver; "
            ".ci/run installs it)\n  test_x.py::test_in_a_fixture\n") in summary
    assert ("mosquitto: 2 test(s) skipped (apt-get install mosquitto; .ci/run installs it)\n"
            "  test_x.py::test_marked\n  test_x.py::test_inside\n") in summary
    assert "test_other_skip" not in summary and "1 passed, 4 skipped" in out


def test_without_mosquitto_the_real_broker_tests_are_listed(tmp_path: Path) -> None:
    # As on a machine without the binary: find_mosquitto() is None before the test modules import it.
    (tmp_path / "no_mosquitto.py").write_text("import aiot_edge.broker\n"
                                              "aiot_edge.broker.find_mosquitto = lambda: None\n")
    out = _pytest(["-p", "no_mosquitto", "tests/test_edge_mqtt.py", "-k", "falls_back_to_mosquitto"], REPO,
                  [tmp_path])
    assert "1 test(s) skipped for a missing system package" in out
    assert "mosquitto: 1 test(s) skipped" in out
    assert "tests/test_edge_mqtt.py::test_embedded_broker_falls_back_to_mosquitto" in out


def test_nothing_is_added_when_nothing_was_skipped_for_a_package(tmp_path: Path) -> None:
    (tmp_path / "test_y.py").write_text("import pytest\n"
                                        "def test_a(): pass\n"
                                        "def test_b(): pytest.skip('not today')\n")
    out = _pytest(["-p", "system_packages", "test_y.py"], tmp_path, [TESTS])
    assert "missing system package" not in out and "1 passed, 1 skipped" in out
