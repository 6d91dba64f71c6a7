"""The API's OpenAPI contract: what FastAPI's generated document leaves out, fixed app-wide.

FastAPI writes the document from the routes; `install_openapi` makes `app.openapi()` finish it,
so that every route, one added later included, gets the same treatment without declaring it:

- each operationId is the route's name (`operation_id`, the app's `generate_unique_id_function`);
- FastAPI's own 422 (`HTTPValidationError`, which this API never sends) becomes the envelope
  `ErrorResponse`, which `service.errors` answers validation errors with;
- an envelope response is `application/json` whatever the route's own media type (an event
  stream's 404 is JSON);
- every operation under `/v1/` declares 503 unless it declares its own: it reaches Redis;
- every operation with a request body declares 413 unless it declares its own: a body over
  SD3SERVE_MAX_BODY_BYTES is refused before any route runs (`service.body_limit`);
- every operation under `/v1/` needs the bearer API key (`security`) and declares 401 and 429
  unless it declares its own: with SD3SERVE_API_KEYS_FILE set, `service.auth` answers them
  before any route runs; `/metrics` takes the key optionally (SD3SERVE_METRICS_REQUIRE_KEY);
- every 429 and 503 declares `Retry-After`, and every 401 `WWW-Authenticate`, unless it
  declares its own: the server sends them;
- the OpenAPI 3.2 `itemSchema` FastAPI writes for streaming routes is dropped: this is a 3.1
  document, where a stream is a string, described by its route.

Routes declare what is theirs (404, 409, success headers, media types) in their decorators, with
`error` and the constants here. `render` gives the text of the committed `clients/openapi.json`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from service.auth import (
    KEYED_PREFIX,
    METRICS_PATH,
    NO_KEY_MESSAGE,
    parse_rate,
    rate_limited_message,
)
from service.body_limit import too_large_message
from service.errors import (
    REDIS_DOWN_MESSAGE,
    BodyTooLarge,
    NotReady,
    RateLimited,
    Unauthorized,
)
from service.schemas import ErrorBody, ErrorResponse, FieldError
from service.settings import ApiSettings

SCHEMAS_REF = "#/components/schemas/"
ENVELOPE_REF = SCHEMAS_REF + ErrorResponse.__name__
# What FastAPI declares for a 422 unless told otherwise, and the schemas it adds for it.
FASTAPI_422_REF = SCHEMAS_REF + "HTTPValidationError"
FASTAPI_422_SCHEMAS = ("HTTPValidationError", "ValidationError")
# Every operation under this prefix reaches Redis, so it can answer 503 when Redis is down.
REDIS_PATHS = "/v1/"
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
"""The schema of a body of raw bytes (an image), which generated clients read as bytes."""

RETRY_AFTER: dict[str, Any] = {
    "description": "Seconds to wait before trying again.",
    "schema": {"type": "integer", "minimum": 1},
    "example": 5,
}


WWW_AUTHENTICATE: dict[str, Any] = {
    "description": "The scheme the API expects: `Bearer`.",
    "schema": {"type": "string"},
    "example": "Bearer",
}
SECURITY_SCHEME = "bearer"
SECURITY_SCHEMES: dict[str, Any] = {
    SECURITY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "An API key (`sd3-serve keys create`), as `Authorization: Bearer KEY`. Needed only "
            "where the service has keys (SD3SERVE_API_KEYS_FILE); each key sees only the jobs "
            "it created and has its own rate limit."
        ),
    }
}


def operation_id(route: APIRoute) -> str:
    """An operation's id: its route's name, the endpoint function's unless `name=` says else."""
    return route.name


def error_example(
    code: str, message: str, field: str | None = None, detail: str | None = None
) -> dict[str, Any]:
    """An envelope as the server sends it; `detail` is the field's own message (validation)."""
    details = [FieldError(field=field, message=detail or message)] if field else []
    body = ErrorBody(code=code, message=message, field=field, details=details)
    # Without nulls, as FastAPI writes the examples routes declare.
    return ErrorResponse(error=body).model_dump(mode="json", exclude_none=True)


def error(
    description: str, code: str, message: str, field: str | None = None, detail: str | None = None
) -> dict[str, Any]:
    """A route's error response, for its `responses`: the envelope, described, with an example."""
    example = error_example(code, message, field, detail)
    return {
        "model": ErrorResponse,
        "description": description,
        "content": {"application/json": {"example": example}},
    }


def _envelope(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ENVELOPE_REF}, "example": example}},
    }


INVALID = _envelope(
    "A parameter is invalid: `error.field` names the first, `error.details` every one.",
    error_example(
        "invalid_parameter",
        "index: Input should be a valid integer, unable to parse string as an integer",
        "index",
        "Input should be a valid integer, unable to parse string as an integer",
    ),
)
# The document describes the default settings.
_MAX_BODY_BYTES: int = ApiSettings.model_fields["max_body_bytes"].default
TOO_LARGE = _envelope(
    f"The body is larger than SD3SERVE_MAX_BODY_BYTES ({_MAX_BODY_BYTES} bytes by default); it "
    "is refused before it is read in full, and the connection is closed.",
    error_example(BodyTooLarge.code, too_large_message(_MAX_BODY_BYTES)),
)
_RATE_LIMIT: str = ApiSettings.model_fields["rate_limit"].default
UNAUTHORIZED = _envelope(
    "No valid API key in `Authorization: Bearer KEY`, where the service has keys "
    "(SD3SERVE_API_KEYS_FILE).",
    error_example(Unauthorized.code, NO_KEY_MESSAGE),
)
METRICS_UNAUTHORIZED = _envelope(
    "No valid API key, where the service has keys and SD3SERVE_METRICS_REQUIRE_KEY is true.",
    error_example(Unauthorized.code, NO_KEY_MESSAGE),
)
RATE_LIMITED = _envelope(
    f"The API key's rate limit (SD3SERVE_RATE_LIMIT, {_RATE_LIMIT} by default, or the key's "
    "own) is reached; retry after `Retry-After` seconds.",
    error_example(RateLimited.code, rate_limited_message(parse_rate(_RATE_LIMIT), 12)),
)
REDIS_DOWN = _envelope(
    "Redis is unreachable; retry after `Retry-After` seconds.",
    error_example(NotReady.code, REDIS_DOWN_MESSAGE),
)


def install_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` (and so `/openapi.json`) return the finished document.

    FastAPI builds the document once, and again after routes are added; each build is finished
    once, in place.
    """
    build = app.openapi
    finished: dict[str, Any] | None = None

    def openapi() -> dict[str, Any]:
        nonlocal finished
        spec = build()
        if spec is not finished:
            finish(spec)
            finished = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def finish(spec: dict[str, Any]) -> None:
    """Apply the rules of this module's docstring to a document FastAPI generated."""
    for path, operation in _operations(spec):
        responses: dict[str, Any] = operation.setdefault("responses", {})
        if path.startswith(REDIS_PATHS) and "503" not in responses:
            responses["503"] = copy.deepcopy(REDIS_DOWN)
        if path.startswith(KEYED_PREFIX):
            operation["security"] = [{SECURITY_SCHEME: []}]
            responses.setdefault("401", copy.deepcopy(UNAUTHORIZED))
            responses.setdefault("429", copy.deepcopy(RATE_LIMITED))
        elif path == METRICS_PATH:
            # Empty: no key is needed unless SD3SERVE_METRICS_REQUIRE_KEY says so.
            operation["security"] = [{}, {SECURITY_SCHEME: []}]
            responses.setdefault("401", copy.deepcopy(METRICS_UNAUTHORIZED))
        if "requestBody" in operation and "413" not in responses:
            responses["413"] = copy.deepcopy(TOO_LARGE)
        for status, response in list(responses.items()):
            if _refers_to(response, FASTAPI_422_REF):
                response = responses[status] = copy.deepcopy(INVALID)
            content = response.get("content", {})
            for media in content.values():
                if media.pop("itemSchema", None) is not None:  # 3.2; in 3.1 a stream is a string
                    media.setdefault("schema", {"type": "string"})
            if _is_error(status) and _refers_to(response, ENVELOPE_REF):
                merged: dict[str, Any] = {}
                for media in content.values():
                    merged.update(media)
                response["content"] = {"application/json": merged}
            if status in ("429", "503"):
                headers = response.setdefault("headers", {})
                headers.setdefault("Retry-After", copy.deepcopy(RETRY_AFTER))
            if status == "401":
                headers = response.setdefault("headers", {})
                headers.setdefault("WWW-Authenticate", copy.deepcopy(WWW_AUTHENTICATE))
        operation["responses"] = dict(sorted(responses.items()))
    # The envelope's schema is there: the routes' `error` responses name its model.
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})
    for name in FASTAPI_422_SCHEMAS:
        schemas.pop(name, None)
    spec.setdefault("components", {})["securitySchemes"] = copy.deepcopy(SECURITY_SCHEMES)


def render(spec: dict[str, Any]) -> str:
    """The document as committed: pretty JSON, keys sorted, one trailing newline."""
    return json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in spec.get("paths", {}).items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, item[method]


def _is_error(status: str) -> bool:
    return status[:1] in ("4", "5")


def _refers_to(response: dict[str, Any], ref: str) -> bool:
    return any(
        media.get("schema", {}).get("$ref") == ref for media in response.get("content", {}).values()
    )
