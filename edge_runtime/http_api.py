"""The device's local HTTP API: POST /v1/predict, POST /v1/feedback, GET /healthz, GET /metrics (Prometheus).

POST /v1/predict?top_k=3 with {"inputs": ...} answers {"model", "task", "outputs" (raw), ...the task's own
fields, "request_id"}: top_k and predictions for a classifier, values for regression, embeddings,
detections, nothing more for "other" (core/answers.py, which `edgefleet predict` uses too). The request
id is the client's `X-Request-Id` header when it sends one, else a new one; a label sent later to POST
/v1/feedback with that id is joined to the prediction and counted in the telemetry window it arrives in
(edge_runtime/feedback.py). `?slice=NAME` or the `X-Edgefleet-Slice` header tags the request with a slice
(else the device's default, if any): the answer says it, and its samples and later labels are counted per
slice in the telemetry too (edge_runtime/slices.py); a bad name is a 400.

Every request gets exactly one complete answer and the connection stays usable (HTTP keep-alive):

| what came | answer |
|---|---|
| a body over max_body_bytes (declared or streamed) | 413, `Connection: close` (the rest is not read) |
| not UTF-8, not JSON, nested deeper than MAX_DEPTH, an integer outside int64, NaN/Infinity/1e999 | 400 |
| not {"inputs": ...}, an unknown field | 400 |
| a query parameter the task does not take, repeated, or a bad value (`?top_k=0`, `?top_k=x`) | 400 naming it |
| an input that is not a regular array of numbers (ragged, strings, null) | 400 naming the input |
| an unknown input, a value its dtype cannot hold (1e39 for float32), a shape off the schema | 422 naming the input |
| a model that answers a valid request with NaN or inf (a model fault, never sent as `null`) | 500 (ModelOutputError) |
| anything unexpected (a bug) | 500 with the exception's type; logged with its traceback |
| a client that disconnects before its body is in | counted as 499 (as nginx logs it); nobody reads the answer |

No exception ever reaches the server: uvicorn closes a kept-alive connection when the application
raises after its response started, which is what Starlette's error middleware does after sending a
500 (the 211 ReadErrors of issue 11). `_AnswerErrors` answers instead of re-raising. Parsing and
prediction run in worker threads, never on the event loop. Every predict request is counted in
DeviceMetrics (edge_runtime/metrics.py) with its status and duration.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgefleet.core.answers import parse_options, task_answer
from edgefleet.core.bounded_json import JsonLimitError
from edgefleet.core.bundle import Bundle
from edgefleet.core.errors import BackendError, EdgefleetError, SchemaError
from edgefleet.core.schema import sample_count
from edgefleet.edge_runtime.feedback import (
    MAX_FEEDBACK_BYTES,
    LabelError,
    RecentPredictions,
    join_feedback,
    label_window_of,
    remember,
    request_id,
)
from edgefleet.edge_runtime.metrics import CONTENT_TYPE, DeviceMetrics
from edgefleet.edge_runtime.model_host import ModelHost
from edgefleet.edge_runtime.request_files import read_body
from edgefleet.edge_runtime.slices import SLICE_HEADER, observe_request, request_slice

log = logging.getLogger(__name__)


class BodyTooLarge(EdgefleetError):
    """The request body exceeds the limit; the rest of it was not read."""


def create_app(
    host: ModelHost,
    *,
    max_body_bytes: int = 2**20,
    health: Callable[[], dict] = dict,
    metrics: DeviceMetrics | None = None,
    recent: RecentPredictions | None = None,
    default_slice: str | None = None,
    model_card: Callable[[], dict] | None = None,
    capture: Callable[..., None] | None = None,
) -> FastAPI:
    """The device's ASGI app. `metrics` counts the predict requests (a fresh DeviceMetrics if None);
    `recent` keeps each answer's prediction by request id for POST /v1/feedback (a fresh map if None);
    `default_slice` is the slice of a request that names none (device.toml `[device] slice`); `capture` is
    offered every answered request (edge_runtime/capture.py), `model_card` answers GET /v1/model-card."""
    app = FastAPI(title="edgefleet device", docs_url=None, redoc_url=None)
    app.add_middleware(_AnswerErrors)
    app.state.metrics = counted = metrics if metrics is not None else DeviceMetrics()
    app.state.recent = recent = recent if recent is not None else RecentPredictions()

    @app.post("/v1/predict")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        bundle = host.current.bundle  # read once: an update may swap the model between requests
        samples, classes = 0, []
        try:
            rid = request_id(request.headers.get("x-request-id"))
            query = request.query_params.multi_items()
            name = request_slice([v for k, v in query if k == "slice"], request.headers.get(SLICE_HEADER),
                                 default_slice)
            body = await _read_body(request, max_body_bytes)
            query = [(k, v) for k, v in query if k != "slice"]
            content, samples, classes = await run_in_threadpool(_predict, host, bundle, body, query, rid, recent,
                                                                name, capture)
            status, headers = 200, None
        except ClientDisconnect:  # the client left while sending its body: nobody to answer
            status, content, headers = 499, _detail("client closed the request"), None
        except EdgefleetError as err:
            status, content = _status(err), _detail(str(err))
            headers = {"Connection": "close"} if isinstance(err, BodyTooLarge) else None
            if status >= 500:  # counted in /metrics; info, not warning: a client can repeat it at will
                log.info("predict answered %d: %s", status, err)
        except Exception as err:  # noqa: BLE001 - a bug must still get its answer and keep the connection
            log.exception("predict failed")
            status, content, headers = 500, _detail(_internal(err)), None
        counted.observe(bundle.name, bundle.version, code=status, seconds=time.perf_counter() - started)
        if status == 200:
            counted.predicted(bundle.name, bundle.version, samples, classes)
        return Response(content, status_code=status, headers=headers, media_type="application/json")

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        """A label for a recent prediction (edge_runtime/feedback.py): 200 with what was counted, 404 for
        an unknown, expired or already labelled request id, 409 when its model no longer serves, 400 for a
        bad body; every refusal carries its `reason`."""
        try:
            body = await _read_body(request, MAX_FEEDBACK_BYTES)
            content = await run_in_threadpool(join_feedback, body, recent, label_window_of(host),
                                              host.current.bundle.manifest["interface"].get("class_names"))
            return Response(_json(content), media_type="application/json")
        except BodyTooLarge as err:
            return JSONResponse({"detail": str(err), "reason": "too_large"}, status_code=413,
                                headers={"Connection": "close"})
        except LabelError as err:
            return JSONResponse({"detail": str(err), "reason": err.reason},
                                status_code=_LABEL_STATUS.get(err.reason, 400))
        except ClientDisconnect:
            return Response(status_code=499)

    @app.get("/healthz")
    def healthz() -> dict:
        current = host.current
        return {"status": "ok", "model": {"name": current.bundle.name, "version": current.bundle.version},
                "backend": current.backend_name, "runtime": current.describe(), **health()}

    @app.get("/v1/model-card")
    def card() -> dict:
        """The serving model's card with the data capture policy in force (the fleet's privacy switch)."""
        if model_card is not None:
            return model_card()
        bundle = host.current.bundle
        return {"model": {"name": bundle.name, "version": bundle.version},
                "model_card": {**(bundle.manifest.get("model_card") or {}), "data_capture_in_force": "off"}}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(counted.render(), media_type=CONTENT_TYPE)

    return app


_LABEL_STATUS = {"unknown_request": 404, "expired": 404, "labelled": 404, "model_retired": 409}


def _predict(host: ModelHost, bundle: Bundle, body: bytes, query: list[tuple[str, str]], rid: str,
             recent: RecentPredictions, slice_name: str | None = None,
             capture: Callable[..., None] | None = None) -> tuple[bytes, int, list[str]]:
    """Parses, predicts and encodes one request, all in a worker thread: (JSON answer, samples, classes).
    The answer is the raw outputs plus the task's own fields (core/answers.py) and the request id, under
    which its prediction is kept for a label that comes later."""
    interface = bundle.manifest["interface"]
    options = parse_options(query, interface)  # AnswerOptionError (400) before any work is done
    inputs = read_body(body, bundle.inputs, max_bytes=len(body))
    outputs = host.predict(inputs, finite=True)  # ModelOutputError
    specs = bundle.outputs
    answer: dict = {
        "model": {"name": bundle.name, "version": bundle.version},
        "task": interface.get("task") or "other",
        "outputs": {k: v.tolist() for k, v in outputs.items()},
        **task_answer(interface, specs, outputs, options),
        "request_id": rid,
        **({"slice": slice_name} if slice_name is not None else {}),
    }
    samples = sample_count(specs, outputs)  # on the batch axis: a GRU's outputs hold theirs on axis 1
    classes = [str(p["class"]) for p in answer.get("predictions", ())]
    remember(recent, rid, bundle, answer, slice_name)
    observe_request(host, bundle, slice_name, answer, samples)
    if capture is not None:
        capture(rid, bundle, inputs, outputs, answer, slice_name)
    return _json(answer), samples, classes


def _json(value: object) -> bytes:
    return json.dumps(value, allow_nan=False, separators=(",", ":")).encode()  # outputs are finite by now


def _detail(message: str) -> bytes:
    return _json({"detail": message})


def _status(err: EdgefleetError) -> int:
    if isinstance(err, BodyTooLarge) or (isinstance(err, JsonLimitError) and err.reason == "too_large"):
        return 413
    if isinstance(err, SchemaError):
        return 422
    if isinstance(err, BackendError):
        return 500  # the request was valid; the model or its runtime failed
    return 400


def _internal(err: Exception) -> str:
    return f"internal error ({type(err).__name__}); see the device log"


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read only up to `limit` bytes (BodyTooLarge beyond: declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _AnswerErrors:
    """ASGI middleware: an exception from the app becomes a 500 answer (if no response started yet) and
    is never re-raised, so the server keeps the connection open for the next kept-alive request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as err:  # noqa: BLE001 - the point of this middleware
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not started:  # else the server closes the connection: a half-sent answer cannot be mended
                await JSONResponse({"detail": _internal(err)}, status_code=500)(scope, receive, send)
