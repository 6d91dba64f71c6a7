"""What the SDK raises: the API's error envelope as a class per status, and transport failures.

Every error of the API has one shape, `{"error": {"code", "message", "field", "details"}}`;
`ApiError` carries those fields, and `retry_after` where the response said when to come back.
"""

from __future__ import annotations

import httpx

from sd3serve_client._generated.models.error_response import ErrorResponse
from sd3serve_client._generated.models.field_error import FieldError
from sd3serve_client._generated.types import Unset


class Sd3ServeError(Exception):
    """The base of every error this SDK raises."""


class APIConnectionError(Sd3ServeError):
    """The request did not get an answer: nothing listening, a dropped connection, a bad URL."""


class APITimeoutError(APIConnectionError):
    """No answer within the client's timeout."""


class ApiError(Sd3ServeError):
    """An error status from the API, with its envelope's fields."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        details: list[FieldError] | None = None,
        retry_after: float | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.field = field
        self.details = details or []
        # Seconds the server asked to wait before trying again (429 and 503 send it).
        self.retry_after = retry_after
        self.response = response


class BadRequest(ApiError):
    """400: the request is malformed."""


class ValidationError(BadRequest):
    """422: a parameter is out of bounds or unknown; `field` names the first."""


class AuthenticationError(ApiError):
    """401 or 403: the API key is missing, wrong, or not allowed this."""


class NotFound(ApiError):
    """404: no such job, image or model (jobs expire)."""


class Conflict(ApiError):
    """409: the job's state forbids it, e.g. canceling a finished job."""


class RateLimited(ApiError):
    """429: the model's queue is full; `retry_after` says when to try again."""


class ServerError(ApiError):
    """5xx: the service failed."""


class Unavailable(ServerError):
    """503: not ready (no model published yet, or Redis unreachable); see `retry_after`."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFound,
    409: Conflict,
    422: ValidationError,
    429: RateLimited,
    503: Unavailable,
}


def error_class(status_code: int) -> type[ApiError]:
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return ServerError if status_code >= 500 else ApiError


def from_response(response: httpx.Response, retry_after: float | None = None) -> ApiError:
    """The error an error response stands for; its body must have been read."""
    cls = error_class(response.status_code)
    try:
        body = ErrorResponse.from_dict(response.json()).error
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not the API's envelope: a proxy's page, or an object store's XML for a presigned URL.
        text = response.text.strip()[:200] or response.reason_phrase
        return cls(
            response.status_code,
            f"http_{response.status_code}",
            text,
            retry_after=retry_after,
            response=response,
        )
    return cls(
        response.status_code,
        body.code,
        body.message,
        field=None if isinstance(body.field, Unset) else body.field,
        details=None if isinstance(body.details, Unset) else body.details,
        retry_after=retry_after,
        response=response,
    )
