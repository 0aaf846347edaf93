"""The device's local HTTP API: POST /v1/predict, GET /healthz, GET /metrics (Prometheus text).

Predictions run in FastAPI's worker threads (plain `def` handlers), never on the event loop. A bad
request gets one precise message: 413 for a body over the limit, 400 for JSON that is not an array
of numbers, 422 for a tensor that does not match the schema; the server keeps serving.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from edgefleet.core.errors import EdgefleetError, SchemaError
from edgefleet.core.profile import class_confidence
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.request_files import arrays_from_json


def create_app(
    host: ModelHost,
    *,
    max_body_bytes: int = 2**20,
    health: Callable[[], dict] = dict,
    metrics: Callable[[], str] = str,
) -> FastAPI:
    app = FastAPI(title="edgefleet device", docs_url=None, redoc_url=None)

    @app.exception_handler(EdgefleetError)
    def _edgefleet_error(request: Request, err: EdgefleetError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422 if isinstance(err, SchemaError) else 400)

    @app.post("/v1/predict")
    def predict(body: bytes = _body(max_body_bytes)) -> dict:
        try:
            data = json.loads(body)
        except ValueError as err:
            raise EdgefleetError(f"request body is not JSON: {err}") from err
        if not isinstance(data, dict) or "inputs" not in data:
            raise EdgefleetError('request body must be {"inputs": [...]} or {"inputs": {"name": [...]}}')
        bundle = host.current.bundle  # read once: an update may swap the model between requests
        interface, names = bundle.manifest["interface"], bundle.manifest["interface"].get("class_names")
        outputs = host.predict(arrays_from_json(data["inputs"], bundle.inputs))
        first_output = bundle.outputs[0].name
        response: dict = {
            "model": {"name": bundle.name, "version": bundle.version},
            "outputs": {k: v.tolist() for k, v in outputs.items()},
        }
        if interface.get("task") == "classification":
            predicted, confidence = class_confidence(outputs[first_output], interface.get("postprocess", "softmax"))
            response["predictions"] = [
                {"class": names[int(p)] if names else int(p), "confidence": float(c)}
                for p, c in zip(predicted, confidence, strict=True)
            ]
        return response

    @app.get("/healthz")
    def healthz() -> dict:
        current = host.current
        return {"status": "ok", "model": {"name": current.bundle.name, "version": current.bundle.version},
                "backend": current.backend_name, "runtime": current.describe(), **health()}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        return metrics()

    return app


def _body(limit: int):  # noqa: ANN202 - a FastAPI dependency
    from fastapi import Depends, HTTPException

    async def read(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPException(413, f"request body of {declared} bytes exceeds the limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    return Depends(read)

