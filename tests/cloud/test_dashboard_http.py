"""The dashboard over plain HTTP (no browser): sign-in refusals, the API refusing viewer tokens, forms
bounded, session expiry on the server, and the fleet page's paging and search over 10,000 devices."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from sqlalchemy import insert, inspect, text

from edgefleet.cloud.auth import VIEWER, create_token
from edgefleet.cloud.dashboard.session import COOKIE, MAX_FORM_BYTES, SessionStore
from edgefleet.cloud.db import Device, make_engine
from tests.cloud.cloud_process import cloud_servers
from tests.mosquitto import MosquittoBroker


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard-http")
    broker = MosquittoBroker(tmp / "mosquitto").start()
    try:
        with cloud_servers() as start:
            server, admin = start({"data_dir": tmp / "data", "port": 0, "mqtt_url": broker.url})
            yield server, admin
    finally:
        broker.stop()


@contextmanager
def signed_in(url: str, token: str) -> Iterator[httpx.Client]:
    """A client that went through the sign-in form as a browser does (Origin, the form's CSRF token)."""
    with httpx.Client(base_url=url, headers={"Origin": url}) as client:
        form = client.get("/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        answer = client.post("/login", data={"csrf": csrf, "token": token, "next": "/"})
        assert answer.status_code == 303 and answer.headers["location"] == "/" and COOKIE in client.cookies
        yield client


def test_a_viewer_token_signs_in_but_the_api_refuses_it(cloud):
    server, _admin = cloud
    viewer = create_token(server.sessions, "ops", VIEWER)
    headers = {"Authorization": f"Bearer {viewer}"}
    for method, path, body in (("GET", "/api/v1/devices", None), ("POST", "/api/v1/devices", {"fleet": "lab"})):
        answer = httpx.request(method, f"{server.url}{path}", json=body, headers=headers)
        assert answer.status_code == 403 and "viewer token" in answer.json()["detail"], answer.text
    with signed_in(server.url, viewer) as client:
        page = client.get("/rollouts")
        assert page.status_code == 200 and "ops (viewer)" in page.text


def test_sign_in_refusals(cloud):
    server, admin = cloud
    token = admin.headers["Authorization"].removeprefix("Bearer ")
    with httpx.Client(base_url=server.url, headers={"Origin": server.url}) as client:
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
        wrong = client.post("/login", data={"csrf": csrf, "token": token + "x"})
        assert wrong.status_code == 303 and wrong.headers["location"] == "/login?m=bad-token"
        assert COOKIE not in client.cookies
        assert "That token is not valid." in client.get("/login?m=bad-token").text
        assert "<b>" not in client.get("/login?m=<b>x</b>").text  # flash texts are fixed, not echoed
        for elsewhere in ("//evil.example/", "/\\evil.example/", "https://evil.example/", "/a\r\nSet-Cookie: x=1"):
            csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)  # a new form
            off_site = client.post("/login", data={"csrf": csrf, "token": token, "next": elsewhere})
            assert off_site.status_code == 303 and off_site.headers["location"] == "/", elsewhere
    with httpx.Client(base_url=server.url, headers={"Origin": server.url}) as client:  # no sign-in form first
        answer = client.post("/login", data={"csrf": "guess", "token": token})
        assert answer.status_code == 403 and "CSRF" in answer.text and COOKIE not in client.cookies


def test_forms_are_bounded_and_pages_answer_html_errors(cloud):
    server, admin = cloud
    with signed_in(server.url, admin.headers["Authorization"].removeprefix("Bearer ")) as client:
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/alerts").text).group(1)
        big = client.post("/alerts/1/acknowledge", content=b"csrf=" + csrf.encode() + b"&x=" + b"a" * MAX_FORM_BYTES,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert big.status_code == 413
        json_body = client.post("/alerts/1/acknowledge", json={"csrf": csrf})
        assert json_body.status_code == 415
        missing = client.get("/devices/nope")
        assert missing.status_code == 404 and "no device &#39;nope&#39; is registered" in missing.text
        assert missing.headers["content-type"].startswith("text/html")
        page = client.get("/")
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src" not in policy


def test_sessions_expire_on_the_server_and_refuse_a_forged_cookie():
    store = SessionStore(lifetime=0.3)
    cookie = store.open("admin", "admin")
    assert store.get(cookie).role == "admin"
    session_id, _, mac = cookie.rpartition(".")
    assert store.get(f"{session_id}.{'0' * len(mac)}") is None and store.get(session_id) is None
    assert SessionStore().get(cookie) is None  # another process's key
    time.sleep(0.4)
    assert store.get(cookie) is None


def test_the_fleet_page_pages_and_searches_10000_devices(cloud):
    server, admin = cloud
    with server.sessions.begin() as session:
        session.execute(insert(Device), [{"id": f"node-{i:05d}", "fleet": "big", "password_hash": "$7$unused",
                                          "online": i % 3 == 0, "model_name": "digits-cnn" if i % 2 else "other",
                                          "model_version": 1} for i in range(10_000)])
    with signed_in(server.url, admin.headers["Authorization"].removeprefix("Bearer ")) as client:
        last = client.get("/", params={"fleet": "big", "page": 200})
        assert "10000 device(s) · page 200 of 200" in last.text
        assert re.findall(r'class="device" href="/devices/([^"]+)"', last.text) == [
            f"node-{i:05d}" for i in range(9950, 10_000)]
        found = client.get("/", params={"q": "node-0999", "online": "yes"})
        ids = re.findall(r'class="device" href="/devices/([^"]+)"', found.text)
        assert ids == [f"node-0999{i}" for i in range(10) if int(f"999{i}") % 3 == 0]
        assert admin.post("/api/v1/devices", json={"fleet": "lab", "id": "edge_7"}).status_code == 201
        for search, expected in (("edge_7", ["edge_7"]), ("edge%", []), ("e_ge", [])):  # no wildcards
            page = client.get("/", params={"q": search}).text
            assert re.findall(r'class="device" href="/devices/([^"]+)"', page) == expected, search
        beyond = client.get("/", params={"fleet": "big", "page": 9999})  # clamped to the last page
        assert "page 200 of 200" in beyond.text


def test_the_fleet_order_is_indexed(tmp_path):
    """A database of an older release gets the index from its migration (tests/cloud/test_migrations.py)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    try:
        assert "ix_devices_fleet_id" in {index["name"] for index in inspect(engine).get_indexes("devices")}
        with engine.connect() as connection:
            plan = " ".join(row[3] for row in connection.execute(
                text("EXPLAIN QUERY PLAN SELECT id FROM devices ORDER BY fleet, id LIMIT 50 OFFSET 9950")))
        assert "ix_devices_fleet_id" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        engine.dispose()
