"""Python SDK of the sd3-serve API.

    from sd3serve_client import Client

    with Client("http://127.0.0.1:8000") as client:
        job = client.generate("a large blue square", width=64, height=64, seed=7)
        png = client.download(job)

The request and response types are generated from the API's OpenAPI spec
(`sd3serve_client._generated`, by scripts/gen-client); this layer adds retries, typed errors,
waiting and typed events.
"""

from sd3serve_client._client import (
    IDEMPOTENCY_KEY,
    AsyncClient,
    Client,
    GenerateOptions,
    Job,
    Model,
)
from sd3serve_client._generated.models.job_status import JobStatus
from sd3serve_client._generated.models.output_format import OutputFormat
from sd3serve_client.errors import (
    APIConnectionError,
    ApiError,
    APITimeoutError,
    AuthenticationError,
    BadRequest,
    Conflict,
    NotFound,
    RateLimited,
    Sd3ServeError,
    ServerError,
    Unavailable,
    ValidationError,
)
from sd3serve_client.events import FINAL_STATUSES, Event, ProgressEvent, StatusEvent

__all__ = [
    "FINAL_STATUSES",
    "IDEMPOTENCY_KEY",
    "APIConnectionError",
    "APITimeoutError",
    "ApiError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequest",
    "Client",
    "Conflict",
    "Event",
    "GenerateOptions",
    "Job",
    "JobStatus",
    "Model",
    "NotFound",
    "OutputFormat",
    "ProgressEvent",
    "RateLimited",
    "Sd3ServeError",
    "ServerError",
    "StatusEvent",
    "Unavailable",
    "ValidationError",
]
