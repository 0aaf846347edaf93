"""What the dashboard's browser tests share: Debian's chromium driven through its chromedriver, a cloud
started as `edgefleet cloud up` on a real Mosquitto, and a small simulated fleet published over MQTT."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import paho.mqtt.client as mqtt
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from edgefleet.core.topics import topic
from tests.waiting import until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 60.0


@contextmanager
def chromium(downloads: Path) -> Iterator[webdriver.Chrome]:
    """A headless Chromium (Debian's, as root: --no-sandbox); quit at the end."""
    options = Options()
    options.binary_location = shutil.which("chromium") or CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1100,800", "--no-first-run", "--disable-extensions",
                     f"--user-data-dir={downloads / 'profile'}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(shutil.which("chromedriver") or CHROMEDRIVER, log_output=str(downloads / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def click_through(driver: webdriver.Chrome, element: WebElement) -> None:
    """Clicks a link or button and waits until the next page replaced this one (click returns before)."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(driver, WAIT).until(lambda _: _detached(page))
    wait_for(lambda: driver.execute_script("return document.readyState") == "complete", "the page to load")


def _detached(element: WebElement) -> bool:
    """True once the element's document is gone. Selenium's staleness_of only knows StaleElementReference;
    Chromium can instead answer "Node with given id does not belong to the document" while it swaps pages."""
    try:
        element.is_enabled()
    except WebDriverException:
        return True
    return False


def sign_in(driver: webdriver.Chrome, url: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{url}/login")
    driver.find_element(By.ID, "token").send_keys(token)
    click_through(driver, driver.find_element(By.ID, "sign-in"))
    assert driver.find_elements(By.ID, "logout"), driver.page_source


def wait_for(predicate, what: str, timeout: float = WAIT):  # noqa: ANN001, ANN201 - any callable
    return until(predicate, what, timeout, every=0.2)


def viewer_token(data_dir: Path) -> str:
    """`edgefleet cloud token --viewer` as a user runs it, against the running cloud's database."""
    done = subprocess.run([sys.executable, "-m", "edgefleet.cli.main", "cloud", "token", "--viewer", "--name", "ops",
                           "--data", str(data_dir)], capture_output=True, text=True, timeout=120, check=True)
    return re.search(r"viewer token: (\S+)", done.stdout).group(1)


@dataclass
class FleetDevice:
    """A device as the cloud sees it over MQTT: it announces itself and sends telemetry windows."""

    client: mqtt.Client
    fleet: str
    device: str
    seq: int = 0

    def publish(self, kind: str, message: dict) -> None:
        info = self.client.publish(topic(self.fleet, self.device, kind), json.dumps(message).encode(), qos=1)
        info.wait_for_publish(10)

    def birth(self, model: str | None, version: int = 1, backend: str | None = None,
              runtime: dict | None = None) -> None:
        message = {"schema": "edgefleet.birth", "v": 1, "fleet": self.fleet, "device": self.device, "online": True,
                   "connection": time.time_ns(), "agent_version": "test"}
        if model is not None:
            message["model"] = {"name": model, "version": version}
        message |= {key: value for key, value in (("backend", backend), ("runtime", runtime)) if value is not None}
        self.publish("presence", message)

    def window(self, payload: bytes) -> None:
        self.client.publish(topic(self.fleet, self.device, "telemetry"), payload, qos=1).wait_for_publish(10)


@dataclass
class Publisher:
    port: int
    clients: list[mqtt.Client] = field(default_factory=list)

    def device(self, fleet: str, device: str) -> FleetDevice:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
        client.connect("127.0.0.1", self.port, keepalive=30)
        client.loop_start()
        self.clients.append(client)
        return FleetDevice(client, fleet, device)

    def close(self) -> None:
        for client in self.clients:
            client.disconnect()
            client.loop_stop()


def latency_counts(rng: np.random.Generator, requests: int, slow: bool) -> tuple[int, ...]:
    """A latency histogram (LATENCY_EDGES_MS bins) around 2-5 ms, or 20-50 ms when slow."""
    from edgefleet.core.telemetry import LATENCY_EDGES_MS

    counts = [0] * (len(LATENCY_EDGES_MS) + 2)
    centre = 10 if slow else 7
    for index in rng.integers(centre, centre + 3, requests):
        counts[int(index)] += 1
    return tuple(counts)


def register(client: httpx.Client, fleet: str, device: str, group: str | None = None) -> None:
    response = client.post("/api/v1/devices", json={"fleet": fleet, "id": device, "group": group})
    assert response.status_code == 201, response.text


def released_bundle(digits_bundle, splits, out: Path, *, version: int, class_names: list[str],  # noqa: ANN001
                    card: dict[str, str]) -> Path:
    """The digits bundle as a release pipeline makes one: given `class_names` (a copy, signed again with the
    digits key), quantized to static int8 by `run_recipe` (which measures every class and two slices and
    attaches the compression report), compiled for onnxruntime-cpu and native (each checked against the
    golden outputs), then given `version` and the model card's `card` texts and signed again."""
    from edgefleet.cloud.compress.recipe import run_recipe
    from edgefleet.cloud.compress.recipe_format import make_recipe
    from edgefleet.compilers.compile import compile_bundle
    from edgefleet.core.bundle import read_manifest, sign, write_manifest
    from edgefleet.core.signing import SigningKey

    key = SigningKey.load(digits_bundle.private_key)
    source = Path(shutil.copytree(digits_bundle.root, out / "source"))
    manifest = read_manifest(source)
    manifest["interface"]["class_names"] = class_names
    write_manifest(source, manifest)
    sign(source, key)
    light = splits.x_test.mean(axis=(1, 2, 3)) < np.median(splits.x_test.mean(axis=(1, 2, 3)))
    data = {"x_train": splits.x_train, "y_train": splits.y_train, "x_test": splits.x_test, "y_test": splits.y_test,
            "slices": {"light_ink": light, "heavy_ink": ~light}}
    result = run_recipe(make_recipe([{"method": "quantize_static", "calibration_samples": 128}]),
                        bundle=source, data=data, out_dir=out / "compress", signing_key=key)
    compiled = compile_bundle(result.bundle, ["onnxruntime-cpu", "native"], out / "compiled", signing_key=key)
    root = Path(compiled.bundle.root)
    manifest = read_manifest(root)
    manifest["version"] = version
    manifest["label"] = f"{manifest['name']} v{version}"
    manifest["model_card"] = {**manifest.get("model_card", {}), **card}
    write_manifest(root, manifest)
    sign(root, key)
    return root
