"""A small client for the cloud API with the standard library only (a device has no httpx)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from edgefleet.core import config
from edgefleet.core.errors import EdgefleetError


class CloudClient:
    def __init__(self, url: str | None, token: str | None, timeout: float = 30.0) -> None:
        url, token = url or config.cloud_url(), token or config.cloud_token()
        if not url:
            raise EdgefleetError(f"no cloud URL: pass --cloud URL or set ${config.CLOUD_ENV}")
        if not token:
            raise EdgefleetError(f"no API token: pass --token TOKEN or set ${config.TOKEN_ENV}")
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def get(self, path: str) -> object:
        return self._request("GET", path)

    def post_json(self, path: str, body: dict) -> object:
        return self._request("POST", path, json.dumps(body).encode(), "application/json")

    def post_file(self, path: str, file: Path, content_type: str = "application/gzip") -> object:
        return self._request("POST", path, Path(file).read_bytes(), content_type)

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> object:
        headers = {"Authorization": f"Bearer {self.token}"}
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            raw = err.read().decode(errors="replace")
            try:
                detail = json.loads(raw).get("detail", raw)
            except (ValueError, AttributeError):
                detail = raw
            raise EdgefleetError(f"{method} {path}: {err.code} {detail}") from err
        except urllib.error.URLError as err:
            raise EdgefleetError(f"cannot reach the cloud at {self.url}: {err.reason}") from err
