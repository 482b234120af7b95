"""Tests that need a system package (mosquitto, chromium, ...): one skip reason, and a summary that lists them.

A test that needs a program pip cannot install (a real MQTT broker, a real browser) skips with
`missing_system_package(...)` as its reason when the program is absent. `pytest_terminal_summary`
(registered by conftest.py) then ends `make test` with how many tests were skipped that way, for
which packages, and which tests, so "passed" on a machine without them is not read as "all passed".
Plain pytest, no torch: a pytest plugin (`-p system_packages`) as much as a helper module.
"""

from __future__ import annotations

import re
from typing import Any

PREFIX = "missing system package: "
_PACKAGES = re.compile(r"missing system package: ([a-z0-9.+-]+(?:, [a-z0-9.+-]+)*)")


def missing_system_package(*packages: str, needed_for: str) -> str:
    """The skip reason for a test that needs `packages` (Debian names), e.g.
    "missing system package: mosquitto (a real MQTT broker; apt-get install mosquitto; .ci/run installs it)"."""
    return f"{PREFIX}{', '.join(packages)} ({needed_for}; apt-get install {' '.join(packages)}; .ci/run installs it)"


def skipped_for_missing_packages(reports: list[Any]) -> dict[str, list[str]]:
    """Package list (as in the reason, "chromium, chromium-driver") -> node ids of the tests skipped for it."""
    found: dict[str, list[str]] = {}
    for report in reports:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        match = _PACKAGES.search(reason)
        if match is not None and report.nodeid not in found.get(match.group(1), []):
            found.setdefault(match.group(1), []).append(report.nodeid)
    return found


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """After the run: "N test(s) skipped for a missing system package", then per package its tests."""
    found = skipped_for_missing_packages(terminalreporter.stats.get("skipped", []))
    if not found:
        return
    total = sum(len(ids) for ids in found.values())
    terminalreporter.write_sep("=", f"{total} test(s) skipped for a missing system package")
    for packages, ids in sorted(found.items()):
        terminalreporter.write_line(f"{packages}: {len(ids)} test(s) skipped "
                                    f"(apt-get install {packages.replace(',', '')}; .ci/run installs it)")
        for nodeid in ids:
            terminalreporter.write_line(f"  {nodeid}")
