"""How the API answers errors: always JSON `{"detail": "<one line>"}`, never a traceback.

- an EdgefleetError: its 4xx from ERROR_STATUS (any other EdgefleetError is a 400; a bundle store that
  cannot be reached a 503), the message as detail;
- a request that does not match a route's parameters or body model (RequestValidationError): 422 with
  every problem on one line (`body.fleet: Field required`), never echoing the input back (an echoed
  invalid value is what once made such answers fail to render);
- anything else: 500 with a fixed message; the traceback goes to the server log only.

(A refusal sent before its request's body was read in full also closes the connection: the request
guard, edgefleet.cloud.request_guard, sees to that for every response.)
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from edgefleet.cloud.api.deps import ConflictError, NotFoundError, TooLargeError, UnsupportedMediaTypeError
from edgefleet.cloud.bundle_store import StoreError
from edgefleet.cloud.enrollment import EnrollmentError
from edgefleet.core.bounded_json import JsonLimitError
from edgefleet.core.errors import EdgefleetError, VerificationError

log = logging.getLogger(__name__)

# The first class an error is an instance of decides its status; any other EdgefleetError is a 400.
ERROR_STATUS: tuple[tuple[type[EdgefleetError], int], ...] = (
    (EnrollmentError, 401),
    (NotFoundError, 404),
    (ConflictError, 409),
    (TooLargeError, 413),
    (UnsupportedMediaTypeError, 415),
    (VerificationError, 422),
    (StoreError, 503),  # the bundle store (S3) unreachable or refusing: the API itself is fine
)
INTERNAL_ERROR = "internal server error; the server log has the details"


def status_for(err: EdgefleetError) -> int:
    if isinstance(err, VerificationError | JsonLimitError) and err.reason == "too_large":
        return 413
    return next((code for cls, code in ERROR_STATUS if isinstance(err, cls)), 400)


def error_response(code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The API's error answer: `{"detail": "<one line>"}`."""
    return JSONResponse({"detail": detail}, status_code=code, headers=headers)


async def _edgefleet_error(request: Request, err: Exception) -> JSONResponse:
    code = status_for(err)  # registered for EdgefleetError only
    log.info("%s %s -> %d: %s", request.method, request.url.path, code, err)
    return error_response(code, str(err))


def validation_message(err: RequestValidationError) -> str:
    """`body.fleet: Field required; query.limit: Input should be ...`: where and what, never the input."""
    problems = []
    for problem in err.errors():
        where = ".".join(str(part) for part in problem.get("loc", ()))
        problems.append(f"{where}: {problem.get('msg', 'invalid')}" if where else str(problem.get("msg")))
    return "; ".join(dict.fromkeys(problems)) or "invalid request"  # a path parameter two dependencies share: once


async def _validation_error(request: Request, err: Exception) -> JSONResponse:
    message = validation_message(err)  # registered for RequestValidationError only
    log.info("%s %s -> 422: %s", request.method, request.url.path, message)
    return error_response(422, message)


async def _internal_error(request: Request, err: Exception) -> JSONResponse:
    log.error("%s %s -> 500", request.method, request.url.path, exc_info=err)
    return error_response(500, INTERNAL_ERROR)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(EdgefleetError, _edgefleet_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
