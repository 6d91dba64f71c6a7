"""The one error envelope and the domain errors, each carrying its code and HTTP status."""

from __future__ import annotations

import logging
from typing import cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.schemas import ErrorBody, ErrorResponse, FieldError

log = logging.getLogger(__name__)

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# The answer to any RedisError: Redis is down, or full and refusing writes (noeviction).
REDIS_DOWN_MESSAGE = "the job store (Redis) is unreachable or full; retry shortly"
REDIS_RETRY_AFTER_S = 5


class ApiError(Exception):
    """A failure a client can act on: its `code` and HTTP `status` are the subclass's."""

    code = "error"
    status = 400

    def __init__(self, message: str, field: str | None = None, retry_after_s: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s


class InvalidParameter(ApiError):
    code = "invalid_parameter"
    status = 422


class IdempotencyKeyReused(ApiError):
    code = "idempotency_key_reused"
    status = 422


class JobNotFound(ApiError):
    code = "job_not_found"
    status = 404


class ImageNotFound(ApiError):
    code = "image_not_found"
    status = 404


class ModelNotFound(ApiError):
    code = "model_not_found"
    status = 404


class JobAlreadyFinished(ApiError):
    code = "job_finished"
    status = 409


class QueueFull(ApiError):
    code = "queue_full"
    status = 429


class NotReady(ApiError):
    code = "not_ready"
    status = 503


class Unauthorized(ApiError):
    code = "unauthorized"
    status = 401


class RateLimited(ApiError):
    code = "rate_limited"
    status = 429


class BodyTooLarge(ApiError):
    code = "body_too_large"
    status = 413


class TooManyStreams(ApiError):
    code = "too_many_streams"
    status = 503


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    details: list[FieldError] | None = None,
    retry_after_s: int | None = None,
) -> JSONResponse:
    if details is None:
        details = [FieldError(field=field, message=message)] if field else []
    body = ErrorResponse(error=ErrorBody(code=code, message=message, field=field, details=details))
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s else None
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _field_name(loc: tuple[int | str, ...]) -> str:
    # ("body", "width") -> "width"; ("header", "prefer") -> "prefer"; the whole body -> "body".
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(ApiError, exc)  # registered for ApiError only
    return error_response(
        exc.status,
        exc.code,
        exc.message,
        exc.field,
        retry_after_s=exc.retry_after_s,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(RequestValidationError, exc)
    details = []
    for err in exc.errors():
        field = _field_name(tuple(err.get("loc", ())))
        message = err.get("msg", "invalid value")
        if err.get("type") == "extra_forbidden":
            message = "unknown field; see the schema of this endpoint in /openapi.json"
        elif err.get("type") == "json_invalid":
            field = "body"
            message = f"the body is not valid JSON: {err.get('ctx', {}).get('error', message)}"
        details.append(FieldError(field=field, message=message))
    first = details[0] if details else FieldError(field="body", message="invalid request")
    summary = "; ".join(f"{d.field}: {d.message}" for d in details)
    return error_response(422, "invalid_parameter", summary, first.field, details)


def unparsable_body(exc: StarletteHTTPException) -> RequestValidationError | None:
    """FastAPI's 400 for a JSON body it could not decode (not UTF-8, nested too deep), as the
    invalid JSON it is: the same answer as any other malformed body, not an undeclared 400."""
    cause = exc.__cause__
    if exc.status_code != 400 or not isinstance(cause, ValueError | RecursionError):
        return None
    error = {"type": "json_invalid", "loc": ("body",), "msg": str(cause), "ctx": {"error": cause}}
    return RequestValidationError([error])


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)
    if (invalid := unparsable_body(exc)) is not None:
        return await _validation_error(request, invalid)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    message = str(exc.detail)
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
        message = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
    response = error_response(exc.status_code, code, message)
    response.headers.update(headers)
    return response


def _allowed_methods(request: Request) -> str:
    # The router's own Allow names the methods of the first route matching the path only; a
    # path served by several routes (GET and DELETE /v1/jobs/{id}) allows all of theirs. So ask
    # the router which methods it would route here.
    def routed(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes)

    return ", ".join(method for method in HTTP_METHODS if routed(method))


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s", exc)
    return error_response(503, NotReady.code, REDIS_DOWN_MESSAGE, retry_after_s=REDIS_RETRY_AFTER_S)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error; the server log has details")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RedisError, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
