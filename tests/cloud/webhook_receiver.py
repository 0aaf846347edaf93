"""A real webhook receiver for tests: an HTTP server on a free loopback port that answers 503 to its first
`fail_first` POSTs, then checks each body's HMAC-SHA256 signature the way a user's receiver would, and
keeps what it accepted."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, secret: str, fail_first: int = 0) -> None:
        self.secret, self.fail_first = secret.encode(), fail_first
        self.answers: list[int] = []  # every status answered, in order
        self.accepted: list[dict] = []  # bodies with a valid signature, answered 204
        self.forged = 0  # bodies whose signature did not verify
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status = receiver._answer(body, self.headers.get("X-Edgefleet-Signature", ""))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._lock = threading.Lock()

    def _answer(self, body: bytes, signature: str) -> int:
        with self._lock:
            if len(self.answers) < self.fail_first:
                status = 503
            elif not hmac.compare_digest(signature, "sha256=" + hmac.new(self.secret, body, hashlib.sha256)
                                         .hexdigest()):
                self.forged += 1
                status = 401
            else:
                self.accepted.append(json.loads(body))
                status = 204
            self.answers.append(status)
            return status

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
