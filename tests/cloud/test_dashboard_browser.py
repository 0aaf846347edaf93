"""The fleet dashboard in a real Chromium (Debian's, through chromedriver) against `edgefleet cloud up` on a
real Mosquitto: a small fleet announces itself and sends telemetry of the real digits model over MQTT, the
real drift monitor opens an alert, and an operator signs in, looks and acts. Screenshots of each page go to
the test's tmp folder; with EDGEFLEET_UPDATE_SCREENSHOTS=1 they are also copied to docs/img/dashboard-*.png
(the README's pictures), so an ordinary test run leaves the work tree as it was."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("selenium", reason="the browser tests need the browser-test extra (make test installs it)")
from selenium.webdriver.common.by import By

from edgefleet.core.bundle import Bundle
from edgefleet.edge_runtime import Predictor
from tests.cloud.api_kit import GZIP
from tests.cloud.cloud_process import cloud_up
from tests.cloud.dashboard_kit import (
    Publisher,
    chromium,
    click_through,
    latency_counts,
    register,
    sign_in,
    viewer_token,
    wait_for,
)
from tests.cloud.test_drift import Traffic, brightness, sample
from tests.mosquitto import MosquittoBroker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
FILLER = 52  # devices beside the named four: 56 in all, two pages of 50


@dataclasses.dataclass
class Stage:
    url: str
    admin: httpx.Client
    admin_token: str
    viewer_token: str
    alert_id: int
    to_approve: str
    to_abort: str
    shots: Path


@pytest.fixture(scope="module")
def stage(tmp_path_factory, digits_bundle, digits_splits):
    tmp = tmp_path_factory.mktemp("dashboard")
    broker = MosquittoBroker(tmp / "mosquitto").start()
    env = {"EDGEFLEET_DRIFT_INTERVAL_SECONDS": "1", "EDGEFLEET_ROLLOUT_INTERVAL_SECONDS": "0.5"}
    try:
        with cloud_up(tmp, "--mqtt-url", broker.url, "--trust", str(digits_bundle.public_key), "--data",
                      str(tmp / "data"), env=env) as (_process, _lines, url, startup):
            token = next(line.split(": ", 1)[1] for line in startup.splitlines() if line.startswith("admin token: "))
            with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as admin:
                yield _populate(tmp, url, admin, token, broker, digits_bundle, digits_splits)
    finally:
        broker.stop()


def _populate(tmp: Path, url: str, admin: httpx.Client, token: str, broker: MosquittoBroker, digits_bundle,
              digits_splits) -> Stage:
    archive = Bundle.open(digits_bundle.root).pack(tmp / "digits.tar.gz")
    assert admin.post("/api/v1/bundles", content=archive.read_bytes(), headers=GZIP).status_code == 201
    named = ["cam-1", "cam-2", "cam-3", "spare-1", "spare-2", "spare-3"]
    for device in named:
        register(admin, "lab", device, "canary" if device.startswith("cam") else None)
    for index in range(FILLER - 2):
        register(admin, "yard", f"unit-{index:03d}")
    publisher = Publisher(broker.port)
    rng = np.random.default_rng(0)
    try:
        cams = {name: publisher.device("lab", name) for name in ("cam-1", "cam-2", "cam-3")}
        cams["cam-1"].birth("digits-cnn")
        cams["cam-2"].birth("digits-cnn")
        cams["cam-3"].birth(HOSTILE)
        with Predictor(digits_bundle.root, trusted_keys=[digits_bundle.public_key]) as predictor:
            traffic = Traffic(predictor)
            first = time.time() - 120  # consecutive 10 s windows, seq by seq, ending about now

            def send(name: str, drifted: bool, slow: bool = False) -> None:
                device = cams[name]
                device.seq += 1
                x = sample(digits_splits, 150, rng)
                end = first + 10 * device.seq
                window = traffic.telemetry(brightness(x, rng) if drifted else x, fleet="lab", device=name,
                                           seq=device.seq, start=end - 10, end=end)
                window = dataclasses.replace(window, latency_ms=latency_counts(rng, 150, slow), errors=int(slow) * 3)
                device.window(window.to_payload())

            for _ in range(3):
                send("cam-1", False)
                send("cam-2", False)
            wait_for(lambda: len(admin.get("/api/v1/devices/cam-1/drift").json()) >= 2, "drift results of cam-1")
            for _ in range(8):
                send("cam-1", True, slow=True)
            alerts = wait_for(lambda: [a for a in admin.get("/api/v1/alerts").json() if a["scope_id"] == "cam-1"],
                              "the drift alert of cam-1")
            wait_for(lambda: len(admin.get("/api/v1/devices/cam-1/drift").json()) >= 4, "more drift results")
    finally:
        publisher.close()
    plans = []
    waves = {"kind": "waves", "waves": [50, 100], "pause_for_approval": True}
    for devices, strategy in ((["spare-1", "spare-2"], waves), (["spare-3"], {})):
        response = admin.post("/api/v1/deployments", json={
            "target": {"devices": devices}, "bundle": {"name": "digits-cnn", "version": 1}, "strategy": strategy})
        assert response.status_code == 201, response.text
        plans.append(response.json()["id"])
    shots = tmp / "screenshots"
    shots.mkdir()
    return Stage(url, admin, token, viewer_token(tmp / "data"), alerts[0]["id"], plans[0], plans[1], shots)


@pytest.fixture(scope="module")
def browser(stage):
    with chromium(stage.shots.parent) as driver:
        yield driver


def screenshot(driver, stage: Stage, name: str) -> None:
    """The whole page (up to 1,600 px high) as PNG, in the test's folder (and in docs/img when asked)."""
    path = stage.shots / f"{name}.png"
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    page_height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max(page_height + 100, 400), 1600))
    try:
        assert driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(width, height)
    assert path.stat().st_size > 1000
    if os.environ.get("EDGEFLEET_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / f"dashboard-{name}.png")


def texts(driver, selector: str) -> list[str]:
    return [element.text for element in driver.find_elements(By.CSS_SELECTOR, selector)]


def session_cookie(driver) -> dict:
    return next(c for c in driver.get_cookies() if c["name"] == "edgefleet_session")


def test_a_page_without_the_cookie_redirects_to_sign_in_and_back(browser, stage):
    browser.delete_all_cookies()
    browser.get(f"{stage.url}/rollouts")
    assert browser.current_url == f"{stage.url}/login?next=%2Frollouts"
    screenshot(browser, stage, "login")
    browser.find_element(By.ID, "token").send_keys(stage.admin_token)
    click_through(browser, browser.find_element(By.ID, "sign-in"))
    assert browser.current_url == f"{stage.url}/rollouts"
    cookie = session_cookie(browser)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert stage.admin_token not in cookie["value"] and stage.admin_token not in browser.page_source
    assert stage.admin_token not in browser.current_url
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly: no script reads it


def test_fleet_overview_pages_and_searches_on_the_server(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    browser.get(f"{stage.url}/")
    assert browser.find_element(By.ID, "total").text == f"{FILLER + 4} device(s) · page 1 of 2"
    rows = browser.find_elements(By.CSS_SELECTOR, "#devices tr")[1:]
    assert len(rows) == 50
    cam1 = next(row for row in rows if "cam-1" in row.text)
    assert "online" in cam1.text and "digits-cnn v1" in cam1.text
    assert cam1.find_elements(By.CSS_SELECTOR, "td.alert")[0].text == "1"  # its open alert
    assert cam1.find_element(By.CSS_SELECTOR, "td.rpm").text == "900"  # 150 requests in its last 10 s window
    screenshot(browser, stage, "fleet")
    click_through(browser, browser.find_element(By.ID, "next"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#devices tr")) - 1 == FILLER + 4 - 50
    browser.get(f"{stage.url}/?q=cam")
    assert texts(browser, "a.device") == ["cam-1", "cam-2", "cam-3"]


def test_a_device_with_a_drift_alert_shows_it_on_its_chart(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    browser.get(f"{stage.url}/devices/cam-1")
    chart = browser.find_element(By.CSS_SELECTOR, "svg#drift-chart")
    markers = chart.find_elements(By.CSS_SELECTOR, "g.alert-marker")
    assert [m.get_attribute("data-alert") for m in markers] == [str(stage.alert_id)]
    assert chart.find_elements(By.CSS_SELECTOR, "line.threshold")
    lines = chart.find_elements(By.CSS_SELECTOR, "polyline.series")
    assert 1 <= len(lines) <= 8 and all(len(line.get_attribute("points").split()) >= 2 for line in lines)
    latency = browser.find_element(By.CSS_SELECTOR, "svg#latency-chart")
    assert [p.get_attribute("data-name") for p in latency.find_elements(By.CSS_SELECTOR, "polyline")] == ["p50", "p99"]
    assert browser.find_element(By.CSS_SELECTOR, "svg#traffic-chart")
    assert texts(browser, f"#alert-{stage.alert_id} td.alert") == ["open"]
    screenshot(browser, stage, "device")


def test_an_alert_is_acknowledged_with_its_evidence(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    browser.get(f"{stage.url}/alerts")
    row = browser.find_element(By.ID, f"alert-{stage.alert_id}")
    assert "signals" in row.find_element(By.CSS_SELECTOR, "details pre").get_attribute("textContent")
    screenshot(browser, stage, "alerts")
    click_through(browser, row.find_element(By.CSS_SELECTOR, "button.ack"))
    assert browser.find_element(By.ID, "flash").text == "Alert acknowledged."
    assert "acknowledged by admin" in browser.find_element(By.ID, f"alert-{stage.alert_id}").text


def deployment(stage: Stage, deployment_id: str) -> dict:
    return stage.admin.get(f"/api/v1/deployments/{deployment_id}").json()


def test_a_viewer_sees_no_buttons_and_its_posts_are_refused(browser, stage):
    sign_in(browser, stage.url, stage.viewer_token)
    browser.get(f"{stage.url}/rollouts")
    assert browser.find_element(By.ID, f"rollout-{stage.to_approve}")
    assert not browser.find_elements(By.CSS_SELECTOR, "button.approve, button.abort")
    csrf = browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] input[name=csrf]").get_attribute("value")
    cookies = {"edgefleet_session": session_cookie(browser)["value"]}
    unacknowledged = [a["id"] for a in stage.admin.get("/api/v1/alerts").json() if a["id"] != stage.alert_id]
    assert unacknowledged  # the fleet's alert: an admin would see its button
    browser.get(f"{stage.url}/alerts")
    assert browser.find_element(By.ID, f"alert-{unacknowledged[0]}")
    assert not browser.find_elements(By.CSS_SELECTOR, "button.ack")
    with httpx.Client(base_url=stage.url, cookies=cookies) as viewer:
        for action in (f"/rollouts/{stage.to_approve}/approve", f"/rollouts/{stage.to_approve}/abort",
                       f"/alerts/{unacknowledged[0]}/acknowledge"):
            answer = viewer.post(action, data={"csrf": csrf}, headers={"Origin": stage.url})
            assert answer.status_code == 403 and "viewer" in answer.text
    browser.get(f"{stage.url}/alerts")
    assert "acknowledged" not in browser.find_element(By.ID, f"alert-{unacknowledged[0]}").text
    refused = httpx.post(f"{stage.url}/api/v1/deployments/{stage.to_approve}/approve",
                         headers={"Authorization": f"Bearer {stage.viewer_token}"})
    assert refused.status_code == 403
    assert deployment(stage, stage.to_approve)["approved"] is False


def test_cross_site_posts_are_refused(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    browser.get(f"{stage.url}/rollouts")
    csrf = browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] input[name=csrf]").get_attribute("value")
    cookies = {"edgefleet_session": session_cookie(browser)["value"]}
    target = f"/rollouts/{stage.to_abort}/abort"
    with httpx.Client(base_url=stage.url, cookies=cookies) as client:
        for headers, data in (({}, {"csrf": csrf}), ({"Origin": "http://evil.example"}, {"csrf": csrf}),
                              ({"Origin": stage.url}, {}), ({"Origin": stage.url}, {"csrf": "forged"})):
            answer = client.post(target, data=data, headers=headers)
            assert answer.status_code == 403, (headers, data, answer.text)
    # a page of another origin that posts the form: the browser sends no SameSite=Strict cookie
    browser.get("data:text/html,<form id=f method=post action='" + stage.url + target + "'>"
                "<input name=csrf value=x></form><script>document.getElementById('f').submit()</script>")
    wait_for(lambda: browser.current_url.startswith(stage.url) and browser.find_elements(By.ID, "error"),
             "the answer to the cross-site form post")
    assert browser.find_element(By.ID, "error").text == "not signed in"
    assert deployment(stage, stage.to_abort)["state"] != "aborted"


def test_an_admin_approves_and_aborts_rollouts(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    browser.get(f"{stage.url}/rollouts")
    click_through(browser, browser.find_element(By.CSS_SELECTOR, f"#rollout-{stage.to_approve} button.approve"))
    assert browser.find_element(By.ID, "flash").text == "Deployment approved."
    assert deployment(stage, stage.to_approve)["approved"] is True
    click_through(browser, browser.find_element(By.CSS_SELECTOR, f"#rollout-{stage.to_abort} button.abort"))
    assert browser.find_element(By.ID, "flash").text == "Deployment aborted."
    assert deployment(stage, stage.to_abort)["state"] == "aborted"
    assert "aborted" in browser.find_element(By.CSS_SELECTOR, f"#rollout-{stage.to_abort} td.state").text
    screenshot(browser, stage, "rollouts")
    click_through(browser, browser.find_element(By.CSS_SELECTOR, f"#rollout-{stage.to_approve} a.rollout"))
    plan = deployment(stage, stage.to_approve)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#waves tr")) - 1 == len(plan["waves"]) == 2
    rows = [row.text.split()[:3] for row in browser.find_elements(By.CSS_SELECTOR, "#rollout-devices tr")[1:]]
    assert rows == [[d["device"], str(d["wave"]), d["state"]] for d in plan["devices"]]
    screenshot(browser, stage, "rollout")


def test_a_hostile_model_name_is_shown_as_text(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    for page, selector in ((f"{stage.url}/?q=cam-3", "#devices td.model"), (f"{stage.url}/devices/cam-3", "td.model")):
        browser.get(page)
        assert texts(browser, selector) == [f"{HOSTILE} v1"]
        assert not browser.find_elements(By.CSS_SELECTOR, "main script, main img")
        assert browser.execute_script("return window.__pwned === undefined")
    logs = browser.get_log("browser")
    blocked = [entry["message"] for entry in logs if "Content Security Policy" in entry["message"]]
    assert blocked == []  # nothing was even tried: the markup arrived as text, not held back by the policy


def test_sign_out_ends_the_session(browser, stage):
    sign_in(browser, stage.url, stage.admin_token)
    old = session_cookie(browser)["value"]
    click_through(browser, browser.find_element(By.ID, "logout"))
    assert browser.find_element(By.ID, "flash").text == "Signed out."
    answer = httpx.get(f"{stage.url}/alerts", cookies={"edgefleet_session": old})
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=%2Falerts"
