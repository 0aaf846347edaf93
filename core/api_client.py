"""A small client for the cloud API with the standard library only (a device has no httpx).

Every failure is one EdgefleetError line: an HTTP error as `<METHOD> <path>: <status> <detail>`, an
unreachable cloud or a connection the cloud closed as what happened. A file upload is checked against
the registry's limit (GET /api/v1/info) before a byte is sent, and streamed from disk.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from pathlib import Path

from edgefleet.core import config
from edgefleet.core.errors import EdgefleetError
from edgefleet.core.tls import client_context


class CloudClient:
    def __init__(self, url: str | None, token: str | None, timeout: float = 30.0, ca: Path | None = None) -> None:
        """ca: a PEM bundle to trust for an https cloud whose certificate a private CA signed (core/tls.py)."""
        url, token = url or config.cloud_url(), token or config.cloud_token()
        if not url:
            raise EdgefleetError(f"no cloud URL: pass --cloud URL or set ${config.CLOUD_ENV}")
        if not token:
            raise EdgefleetError(f"no API token: pass --token TOKEN or set ${config.TOKEN_ENV}")
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self.ca = ca
        self._tls = client_context(ca) if self.url.startswith("https://") else None

    def get(self, path: str) -> object:
        return self._request("GET", path)

    def get_bytes(self, path: str) -> tuple[bytes, dict[str, str]]:
        """The raw body and headers of a GET (a file the cloud builds: a dataset's .npz)."""
        return self._request("GET", path, raw=True)

    def delete(self, path: str) -> object:
        return self._request("DELETE", path)

    def post_json(self, path: str, body: dict) -> object:
        try:
            data = json.dumps(body, allow_nan=False).encode()
        except ValueError as err:  # the cloud refuses NaN and infinities: say so before sending
            raise EdgefleetError(f"POST {path}: the request holds a number JSON cannot carry ({err})") from err
        return self._request("POST", path, data, "application/json")

    def put_json(self, path: str, body: dict) -> object:
        return self._request("PUT", path, json.dumps(body, allow_nan=False).encode(), "application/json")

    def post_file(self, path: str, file: Path, content_type: str = "application/gzip") -> object:
        """Uploads the file as the raw body; refuses one over the registry's max_bundle_bytes up front."""
        size = Path(file).stat().st_size
        limits = self.get("/api/v1/info").get("limits") or {}  # an older cloud tells none
        limit = limits.get("max_bundle_bytes")
        if isinstance(limit, int) and size > limit:
            raise EdgefleetError(f"{file} is {size} bytes; the registry at {self.url} takes at most {limit} bytes "
                                 f"(its max_bundle_bytes)")
        with Path(file).open("rb") as handle:
            return self._request("POST", path, handle, content_type, {"Content-Length": str(size)})

    def _request(self, method: str, path: str, body: object = None, content_type: str | None = None,
                 extra_headers: dict[str, str] | None = None, raw: bool = False) -> object:
        headers = {"Authorization": f"Bearer {self.token}", **(extra_headers or {})}
        if content_type:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._tls) as response:
                content = response.read()
                return (content, dict(response.headers)) if raw else json.loads(content or b"null")
        except urllib.error.HTTPError as err:
            raise EdgefleetError(f"{method} {path}: {err.code} {_detail(err.read())}") from err
        except urllib.error.URLError as err:
            raise EdgefleetError(f"cannot reach the cloud at {self.url}: {err.reason}") from err
        except TimeoutError as err:
            raise EdgefleetError(f"{method} {path}: the cloud at {self.url} did not answer within "
                                 f"{self.timeout:g} s") from err
        except (OSError, http.client.HTTPException) as err:  # reset, broken pipe, closed mid-answer, timeout
            raise EdgefleetError(f"{method} {path}: the cloud at {self.url} closed the connection before it "
                                 f"answered ({type(err).__name__}: {err})") from err


def _detail(raw: bytes) -> str:
    """The `detail` of an API error body (a list of problems is joined), or the body itself."""
    text = raw.decode(errors="replace")
    try:
        detail = json.loads(text).get("detail", text)
    except (ValueError, AttributeError):
        return text
    if isinstance(detail, list):
        return "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    return str(detail)
