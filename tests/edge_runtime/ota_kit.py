"""Helpers for the model host and updater tests (test_model_host, test_updater, test_update_faults):
bundle variants signed with the fixture's key, a real HTTP server for bundle archives (with Range
support and optional throttling), and a Predictor that refuses to run once closed.

(The download and slot store tests have their own kit, ota_attack_kit.py.)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from edgefleet.core.bundle import Bundle, file_digest, sign, write_manifest
from edgefleet.core.signing import SigningKey
from edgefleet.edge_runtime.predictor import Predictor


def make_variant(src: Path, dst: Path, private_key: Path, *, version: int | None = None, weight_noise: float = 0.0,
                 golden_offset: float = 0.0, seed: int = 0) -> Path:
    """A signed copy of the bundle at src: another version, perturbed weights (golden outputs recomputed
    so that its self-test still passes), or golden outputs shifted (so that its self-test fails)."""
    dst = Path(shutil.copytree(src, dst))
    manifest = json.loads((dst / "manifest.json").read_text())
    if version is not None:
        manifest["version"] = version
        manifest["label"] = f"{manifest['name']} v{version}"
    if weight_noise:
        _perturb_weights(dst / "model.onnx", weight_noise, seed)
    if weight_noise or golden_offset:
        with np.load(dst / "golden.npz") as data:
            arrays = dict(data)
        if weight_noise:
            import onnxruntime as ort

            session = ort.InferenceSession(str(dst / "model.onnx"), providers=["CPUExecutionProvider"])
            arrays["outputs/logits"] = session.run(None, {"pixels": arrays["inputs/pixels"]})[0]
        arrays["outputs/logits"] = arrays["outputs/logits"] + np.float32(golden_offset)
        np.savez(dst / "golden.npz", **arrays)
    write_manifest(dst, manifest)
    sign(dst, SigningKey.load(private_key))
    return dst


def _perturb_weights(path: Path, scale: float, seed: int) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        weights = numpy_helper.to_array(init)
        if weights.dtype == np.float32 and weights.ndim >= 2:
            noise = rng.standard_normal(weights.shape).astype(np.float32) * np.float32(scale * weights.std())
            init.CopyFrom(numpy_helper.from_array(weights + noise, init.name))
    onnx.save(model, str(path))


def pack(root: Path, out: Path) -> Path:
    return Bundle.open(root).pack(out)


def sha256(path: Path) -> str:
    return file_digest(path)


class StrictPredictor(Predictor):
    """Fails a call that starts after close() or during which close() ran (the ONNX Runtime backend's
    hot path would otherwise keep working after close, hiding a premature close)."""

    closed = False

    def predict(self, inputs):  # noqa: ANN001, ANN201
        if self.closed:
            raise RuntimeError("predict on a closed predictor")
        outputs = super().predict(inputs)
        if self.closed:
            raise RuntimeError("the predictor was closed during the call")
        return outputs

    def close(self) -> None:
        self.closed = True
        super().close()


class ArchiveServer:
    """Serves the files of a directory on 127.0.0.1 with HTTP Range support; `chunk`/`delay` throttle."""

    def __init__(self, directory: Path, *, chunk: int = 1 << 16, delay: float = 0.0) -> None:
        self.directory = Path(directory)
        self.chunk, self.delay = chunk, delay
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

            def do_GET(self) -> None:  # noqa: N802
                server.requests.append((self.path, self.headers.get("Range")))
                path = server.directory / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start, status = 0, 200
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and int(match.group(1)) < len(data):
                    start, status = int(match.group(1)), 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                try:
                    for offset in range(start, len(data), server.chunk):
                        self.wfile.write(data[offset:offset + server.chunk])
                        self.wfile.flush()
                        if server.delay:
                            time.sleep(server.delay)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="archive-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def env_with_repo() -> dict:
    """The environment for a subprocess that imports tests.* from the repository root."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
