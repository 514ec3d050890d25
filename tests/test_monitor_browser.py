"""The monitor in real headless Chromium: `populace run ... --monitor` end to end, controls, the token.

Needs Debian `chromium` and `chromium-driver` (installed by .ci/run) and selenium. Saves the page of
a finished run to docs/img/monitor.png.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLAGSHIP = ROOT / "examples" / "guess_two_thirds.pop"
SCREENSHOT = ROOT / "docs" / "img" / "monitor.png"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_run(tmp_path, name, port, *extra, env=None):
    """`populace run --monitor` as a child in its own process group (ended by its id at teardown)."""
    log = open(tmp_path / f"{name}.log", "w")
    # NiceGUI takes a server that inherits PYTEST_CURRENT_TEST for its own test harness.
    env = {k: v for k, v in (env or os.environ).items() if k != "PYTEST_CURRENT_TEST"}
    command = [sys.executable, "-m", "populace.cli", "run", str(FLAGSHIP), "--executor", "local",
               "--quiet", "--run-dir", str(tmp_path / name), "--monitor", "--port", str(port), *extra]
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "monitor: http" in (tmp_path / f"{name}.log").read_text():
            return child
        assert child.poll() is None, (tmp_path / f"{name}.log").read_text()
        time.sleep(0.1)
    raise AssertionError("the monitor did not start: " + (tmp_path / f"{name}.log").read_text())


def end(child) -> None:
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGINT)  # Ctrl-C: the CLI ends its monitor child
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1500,1750"):
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="populace-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(check, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # the page is still being built: a missing element, a stale one
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def text_of(driver, css) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, css)]


def status_of(driver) -> str:
    from selenium.webdriver.common.by import By

    badges = driver.find_elements(By.CSS_SELECTOR, ".q-badge")
    return badges[0].text.strip() if badges else ""


def metric_values(driver) -> dict:
    """Every metric chart's options as ECharts holds them in the page (title -> data)."""
    return driver.execute_script("""
        const out = {};
        for (const el of document.querySelectorAll('.metric-chart')) {
            const chart = getElement(el.id.slice(1)).chart;
            const option = chart.getOption();
            out[option.title[0].text] = {x: option.xAxis[0].data, y: option.series[0].data};
        }
        return out;
    """)


@pytest.mark.slow
def test_run_with_monitor_in_chromium(browser, tmp_path):
    port = free_port()
    child = start_run(tmp_path, "finished", port, "--set", "players=2000", "--shards", "4")
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait_for(lambda: status_of(browser) == "finished", what="the run to finish")
        steps = wait_for(lambda: text_of(browser, ".step-status") if len(text_of(browser, ".step-status")) == 5 else None,
                         what="the plan")
        wait_for(lambda: set(text_of(browser, ".step-status")) == {"finished"}, what="every step finished")
        metrics = [json.loads(line) for line in (tmp_path / "finished" / "metrics.jsonl").read_text().splitlines()]
        charts = wait_for(lambda: metric_values(browser) if len(metric_values(browser)) == 2 else None, what="charts")
        assert charts["mean_guess"]["y"] == [m["mean_guess"] for m in metrics]
        assert charts["target"]["y"] == [m["target"] for m in metrics]
        assert charts["mean_guess"]["x"] == ["round=1", "round=2", "round=3"]
        assert steps == ["finished"] * 5
        # the failed answers as the CLI counts them, and no control left on a finished run
        assert wait_for(lambda: text_of(browser, ".stat-errors") == ["0 of 6.0k (0.0%)"] or None,
                        what="the failed answers")
        from selenium.webdriver.common.by import By

        for label in ("pause", "resume", "stop"):
            assert browser.find_element(By.CSS_SELECTOR, f"button.control-{label}").get_attribute("disabled")
        time.sleep(0.5)  # let the charts finish drawing
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))
    finally:
        end(child)
    assert child.returncode == 0, (tmp_path / "finished.log").read_text()


@pytest.mark.slow
def test_exposed_monitor_needs_the_token_and_its_controls_work(browser, tmp_path):
    from selenium.webdriver.common.by import By

    port, token = free_port(), "test-token-0123456789"
    env = dict(os.environ, POPULACE_MONITOR_TOKEN=token)
    # Many rounds: the run is still going when the page pauses it.
    child = start_run(tmp_path, "long", port, "--set", "players=2000", "--set", "rounds=100000",
                      "--host", "0.0.0.0", env=env)
    try:
        assert token not in (tmp_path / "long.log").read_text()  # a token from the environment is not printed
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code in (401, 403)
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

        browser.delete_all_cookies()
        browser.get(url + f"?token={token}")
        wait_for(lambda: status_of(browser) == "running", what="a running run")
        assert "token" not in browser.current_url  # moved into a cookie

        def click(label):
            browser.find_element(By.CSS_SELECTOR, f"button.control-{label}").click()

        click("pause")
        wait_for(lambda: status_of(browser) == "paused", what="paused")
        assert json.loads((tmp_path / "long" / "control.json").read_text())["action"] == "pause"
        click("resume")
        wait_for(lambda: status_of(browser) == "running", what="running again")
        click("stop")
        wait_for(lambda: status_of(browser) == "stopped", what="stopped")
        events = [json.loads(line) for line in (tmp_path / "long" / "events.jsonl").read_text().splitlines()]
        kinds = [e["type"] for e in events]
        assert "run_paused" in kinds and "run_resumed" in kinds and "stop_requested" in kinds
        assert events[-1] == dict(events[-1], type="run_finished", status="stopped")
    finally:
        end(child)
