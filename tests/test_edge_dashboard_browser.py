"""The dashboard page in a real headless browser (Debian's chromium + chromedriver, driven by Selenium).

A real daemon reads PCM from a pipe the test writes to: the page shows it online, an alert appears
without a reload, acknowledging it changes its row, and after the daemon is killed (SIGKILL: the
broker publishes its last will) the device turns offline. A device and a file name carrying HTML
render as text. A screenshot is saved under the test's tmp dir and, when AIOT_TEST_ARTIFACTS is set,
copied there. Every wait is explicit and bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
import pytest
from edge_dashboard_fixtures import dashboards_fixture  # noqa: F401 - registers the fixture
from edge_fixtures import (  # noqa: F401 - the *_fixture names register fixtures
    brokers_fixture,
    daemons_fixture,
    edge_config,
    pattern_signal,
    subscribers_fixture,
    tiny_bundle_fixture,
)
from paho.mqtt.enums import CallbackAPIVersion
from system_packages import missing_system_package

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

WAIT_S = 20  # one bound for every wait on the page (a loaded 2-core CI box is slow, never this slow)
HOSTILE_DEVICE = "<img src=x onerror=window.__pwned=1>"  # a topic level cannot hold '/', so no </script> here
HOSTILE_SOURCE = "/data/<script>window.__pwned=2</script>.wav"


def _browser_paths() -> tuple[str, str] | None:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(name="browser")
def browser_fixture(tmp_path: Path) -> Iterator[Any]:
    paths = _browser_paths()
    if paths is None:
        pytest.skip(missing_system_package("chromium", "chromium-driver", needed_for="the dashboard in a real browser"))
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    # root in CI: no sandbox; containers have a small /dev/shm
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=paths[1], log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_page(driver: Any, script: str, what: str, *args: Any) -> Any:
    """Wait until `script` (JavaScript returning a value) is truthy on the page; fail with `what`."""
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
            lambda d: d.execute_script(script, *args), message=what)
    except TimeoutException:
        page = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"timed out after {WAIT_S} s waiting for {what}; page text:\n{page}")


def save_screenshot(driver: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "the browser could not take a screenshot"
    artifacts = os.environ.get("AIOT_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / name)
    return path


DEVICE_STATUS_IS = """
const row = [...document.querySelectorAll('#devices tbody tr')].find(r => r.dataset.device === arguments[0]);
return row !== undefined && row.querySelector('.device-status').textContent === arguments[1];
"""
ALERT_ROWS = """[...document.querySelectorAll('#alerts tbody tr.alert')].map(r => ({
  id: r.dataset.eventId, acked: r.classList.contains('acked'), text: r.textContent}))"""


def test_live_alert_ack_and_killed_daemon_in_a_real_browser(tmp_path, brokers, daemons, dashboards, tiny_bundle,
                                                            browser):
    broker = brokers().start()
    dash = dashboards(broker)
    config = edge_config(tmp_path / "edge.yaml", bundle=str(tiny_bundle), broker=f"mqtt://127.0.0.1:{broker.port}",
                         spool={"path": str(tmp_path / "spool.db")}, telemetry_every_s=0.2)
    daemon = daemons("--config", str(config), "--source", "stdin", stdin=subprocess.PIPE)

    browser.get(dash.url)
    assert browser.title == "aiot-edge · live alerts"
    wait_page(browser, DEVICE_STATUS_IS, "device lab/pi1 online", "lab/pi1", "online")
    wait_page(browser, "return document.getElementById('live').textContent === 'live'", "the live stream")
    assert browser.execute_script("return " + ALERT_ROWS) == []
    browser.execute_script("window.__sameDocument = 'yes'")  # gone if the page reloads

    # two loud windows through the daemon's stdin: two alerts, pushed to the open page
    pcm = (np.concatenate([np.zeros(16000, np.float32), pattern_signal(2)]) * 32767).astype("<i2").tobytes()
    daemon.proc.stdin.write(pcm)
    daemon.proc.stdin.flush()
    rows = wait_page(browser, "const r = " + ALERT_ROWS + "; return r.length === 2 && r",
                     "2 alert rows")
    assert browser.execute_script("return window.__sameDocument") == "yes"
    api = dash.get("/api/alerts")
    assert [r["id"] for r in rows] == [a["event_id"] for a in api]  # the DOM list is the API's, newest first
    assert all(not r["acked"] and "fan / id_00" in r["text"] and "stdin" in r["text"] for r in rows)
    wait_page(browser, "const c = document.querySelector('.chart canvas'); return c && c.width > 0", "the chart")

    # acknowledge the newest: its row changes, the API and the broker know
    first = rows[0]["id"]
    button = browser.find_element(By.CSS_SELECTOR, f'tr[data-event-id="{first}"] button.ack')
    button.click()
    wait_page(browser, "const r = document.querySelector(`tr[data-event-id='${arguments[0]}']`);"
                       "return r && r.classList.contains('acked') && r.textContent.includes('acknowledged by')",
              "the acked row", first)
    assert [a["ack_ts"] is not None for a in dash.get("/api/alerts")] == [True, False]
    assert browser.find_elements(By.CSS_SELECTOR, f'tr[data-event-id="{rows[1]["id"]}"] button.ack')

    # the daemon dies without a goodbye: the broker's last will turns the device offline on the page
    daemon.signal(signal.SIGKILL)
    daemon.proc.wait(10)
    wait_page(browser, DEVICE_STATUS_IS, "device lab/pi1 offline", "lab/pi1", "offline")
    time.sleep(0.3)  # let the last frame paint before the picture
    shot = save_screenshot(browser, tmp_path, "dashboard_live.png")
    assert shot.stat().st_size > 10_000
    assert browser.execute_script("return window.__sameDocument") == "yes"


def test_hostile_names_render_as_text(tmp_path, brokers, dashboards, browser):
    broker = brokers().start()
    dash = dashboards(broker)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="hostile")
    client.will_set(f"aiot/lab/{HOSTILE_DEVICE}/status", "offline", qos=1, retain=True)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(f"aiot/lab/{HOSTILE_DEVICE}/status", "online", qos=1, retain=True).wait_for_publish(5)
        # an hour of score history (a slow rise towards the threshold), drawn when the page loads
        now = time.time()
        for i in range(60):
            score = {"ts": now - 3540 + 60 * i, "scores": {"peak": 0.4 + 0.008 * i + 0.05 * np.sin(i / 3)},
                     "window_s": 60.0, "scorer": "peak", "threshold": 1.0}
            client.publish(f"aiot/lab/{HOSTILE_DEVICE}/score", json.dumps(score), qos=1).wait_for_publish(5)
        browser.get(dash.url)
        wait_page(browser, DEVICE_STATUS_IS, "the hostile device online", f"lab/{HOSTILE_DEVICE}", "online")
        alert = {"event_id": "hostile-1", "device": HOSTILE_DEVICE, "machine": "<b>fan</b>", "ts": time.time(),
                 "score": 3.0, "threshold": 1.0, "scorer": "peak", "model": "<i>model</i>", "severity": "critical",
                 "window_start": 0.0, "window_end": 2.0, "machine_id": "<u>id</u>", "source": HOSTILE_SOURCE}
        client.publish(f"aiot/lab/{HOSTILE_DEVICE}/alert", json.dumps(alert), qos=1).wait_for_publish(5)
        rows = wait_page(browser, "const r = " + ALERT_ROWS + "; return r.length && r",
                         "the hostile alert row")
        assert HOSTILE_DEVICE in rows[0]["text"] and "<b>fan</b>" in rows[0]["text"]
        assert "<script>window.__pwned=2</script>.wav" in rows[0]["text"]  # the file name, shown as text
        injected = browser.execute_script(
            "return document.querySelectorAll('main script, main img, main b, main i, main u').length")
        assert injected == 0
        assert browser.execute_script("return window.__pwned === undefined")
        save_screenshot(browser, tmp_path, "dashboard_hostile.png")
    finally:
        sock = client.socket()
        client.loop_stop()
        if sock is not None:
            sock.close()  # no DISCONNECT: the broker sends the last will, as for a crashed device
    wait_page(browser, DEVICE_STATUS_IS, "the hostile device offline via its last will", f"lab/{HOSTILE_DEVICE}",
              "offline")
    try:
        logs = browser.get_log("browser")
    except WebDriverException:
        logs = []  # not every driver exposes the console log
    assert not [e for e in logs if e.get("level") == "SEVERE"], logs
