"""FlashheadError -> HTTP. The only place that chooses status codes.

Bodies follow fal: validation errors are a `detail` list (422); every other error is
`{"detail": "<text>", "error_type": "<kind>"}` plus the header X-Fal-Error-Type.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from flashhead import errors as E

TIMEOUT_TYPE_HEADER = "X-Fal-Request-Timeout-Type"
RETRY_AFTER_S = 30          # rate-limited upstream, full disk or queue: worth another try later

_STATUS: list[tuple[type[E.FlashheadError], int]] = [   # most specific first
    (E.PayloadTooLarge, 413), (E.BodyTimeout, 408), (E.StorageFull, 507), (E.UnsupportedMediaType, 415),
    (E.InputError, 422), (E.NotFound, 404), (E.AlreadyStored, 409), (E.Unauthorized, 401), (E.Forbidden, 403),
    (E.QueueFull, 429),
    (E.RateLimited, 429), (E.CapacityExceeded, 429),
    (E.Timeout, 504), (E.Cancelled, 400), (E.BackendUnavailable, 503), (E.RenderFailed, 500),
    (E.FlashheadError, 500),
]


def _all_subclasses(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _all_subclasses(sub)
    return out


def status_for(exc_type: type[E.FlashheadError]) -> int:
    return next(code for cls, code in _STATUS if issubclass(exc_type, cls))


def status_for_type(error_type: str | None) -> int:
    """HTTP status for a stored error_type string (jobs keep the string, not the class)."""
    for cls in _all_subclasses(E.FlashheadError):
        if cls.error_type == error_type:
            return status_for(cls)
    return 500


def error_body(message: str, error_type: str, field: str | None = None, *,
               input_error: bool = False, location: str = "body") -> dict:
    """Input errors use the validation list, so fal clients show them like a 422 from pydantic
    (loc: where the field was sent, body | query | header, then its name)."""
    if input_error:
        loc = [location, field] if field else [location]
        return {"detail": [{"loc": loc, "msg": message, "type": error_type}], "error_type": error_type}
    return {"detail": message, "error_type": error_type}


def error_headers(error_type: str, status: int) -> dict:
    headers = {"X-Fal-Error-Type": error_type}
    if status == 504:
        headers[TIMEOUT_TYPE_HEADER] = "user"   # a user deadline: fal clients do not retry it
    if status == 401:
        headers["WWW-Authenticate"] = "Key"
    if error_type in (E.RateLimited.error_type, E.StorageFull.error_type, E.QueueFull.error_type):
        headers["Retry-After"] = str(RETRY_AFTER_S)
    return headers


@contextmanager
def sent_in(location: str, *fields: str):
    """Input errors about `fields` raised inside name `location` (query, header) as where those
    fields were sent, instead of the JSON body (the checks they share do not know)."""
    try:
        yield
    except E.InputError as exc:
        if exc.field in fields:
            exc.location = location
        raise


def _retry_after(exc: E.FlashheadError) -> dict:
    """RateLimited and CapacityExceeded say when to come back (whole seconds, at least 1)."""
    seconds = getattr(exc, "retry_after_s", None)
    return {"Retry-After": str(max(1, math.ceil(seconds)))} if seconds else {}


def error_response(exc: E.FlashheadError, extra_headers: dict | None = None) -> JSONResponse:
    status = status_for(type(exc))
    body = error_body(exc.message, exc.error_type, exc.field, input_error=isinstance(exc, E.InputError),
                      location=exc.location)
    return JSONResponse(body, status, headers={**error_headers(exc.error_type, status),
                                               **_retry_after(exc), **(extra_headers or {})})


def install(app: FastAPI) -> None:
    @app.exception_handler(E.FlashheadError)
    async def _flashhead(request: Request, exc: E.FlashheadError) -> JSONResponse:
        rid = getattr(request.state, "fal_request_id", None)
        return error_response(exc, {"x-fal-request-id": rid} if rid else None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, 422,
                            headers={"X-Fal-Error-Type": E.InputError.error_type})
