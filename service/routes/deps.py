"""Shared route helpers: reaching the service and shaping a job for the wire."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from fastapi import Request
from starlette.applications import Starlette

from common.jobstore import JobRecord
from service.admission import IDEMPOTENCY_KEY
from service.auth import request_owner
from service.errors import InvalidParameter
from service.schemas import JobLinks, JobResponse
from service.service import GenerationService, JobView

# Routes reach the service (service_of) and the request's owner (service.auth.request_owner)
# with plain calls on the request, as vLLM's routes do, not as FastAPI dependencies: solving
# them on every request cost POST /v1/generate about 4 % of its CPU. Any dependency left must
# be `async def`: FastAPI runs a plain `def` one in its thread pool, a hop per request.


def service_of(request: Request) -> GenerationService:
    """The service of the app answering `request`."""
    service: GenerationService = request.app.state.service
    return service


@dataclass(frozen=True)
class HeaderParam:
    """An optional request header that a route reads itself, documented (in the route's
    `openapi_extra`) exactly as FastAPI documents a declared `Header` parameter.

    FastAPI solves declared header parameters anew on every request: the two of
    POST /v1/generate cost it 8 % of its instructions (counted under callgrind).
    """

    name: str  # as on the wire, lower case
    title: str
    description: str
    pattern: re.Pattern[str] | None = None
    # What a value must be, said in the refusal of one that does not match `pattern`.
    rule: str = ""

    def read(self, request: Request) -> str | None:
        value = request.headers.get(self.name)
        if value is not None and self.pattern is not None and not self.pattern.fullmatch(value):
            raise InvalidParameter(f"{self.title} must be {self.rule}", field=self.name)
        return value

    def openapi(self) -> dict[str, object]:
        string: dict[str, object] = {"type": "string"}
        if self.pattern is not None:
            string["pattern"] = self.pattern.pattern
        schema = {
            "anyOf": [string, {"type": "null"}],
            "description": self.description,
            "title": self.title,
        }
        return {
            "name": self.name,
            "in": "header",
            "required": False,
            "schema": schema,
            "description": self.description,
        }


IDEMPOTENCY_KEY_HEADER = HeaderParam(
    "idempotency-key",
    "Idempotency-Key",
    (
        "Any unique string of 1..255 printable ASCII characters (a UUID, say). Retrying "
        "with the same key and body within 24 h returns the job the first request "
        "created instead of a second one; the same key with another body is refused "
        "(422, `idempotency_key_reused`). Keys are scoped per API key."
    ),
    IDEMPOTENCY_KEY,
    "1 to 255 printable ASCII characters",
)
"""The `Idempotency-Key` header of the routes that create a job."""


# A job id every route takes, put in a route's path once, then replaced by each job's own.
_JOB_ID_SLOT = "{job_id}"


# Few distinct (scheme, server, Host, root path) reach one process; bounded all the same, as
# the Host header is the client's to choose.
BASE_URLS_CACHED = 64


@functools.lru_cache(maxsize=BASE_URLS_CACHED)
def _base_url(
    scheme: str, server: tuple[str, int] | None, host: bytes | None, root_path: str
) -> str:
    """Starlette's `request.base_url` for a request with these parts: built afresh, it cost
    POST /v1/generate 2 % of its instructions."""
    scope = {
        "type": "http",
        "scheme": scheme,
        "server": server,
        "root_path": root_path,
        "path": root_path,
        "query_string": b"",
        "headers": [] if host is None else [(b"host", host)],
    }
    return str(Request(scope).base_url)


@dataclass(frozen=True)
class LinksAt:
    """A job's URLs as a request to `base_url` answers them: the request's own, or, for a
    webhook, the base URL kept from the request that submitted the job.

    Starlette's `url_for` looks the route up by name through every router on every call (about
    55 µs each, three per job answered); here a route's path is looked up once per app,
    and each job's id is put into it.
    """

    app: Starlette
    base_url: str

    @classmethod
    def of(cls, request: Request) -> LinksAt:
        scope = request.scope
        host = next((value for name, value in scope["headers"] if name == b"host"), None)
        server = scope.get("server")
        return cls(
            request.app,
            _base_url(
                scope.get("scheme", "http"),
                None if server is None else tuple(server),
                host,
                scope.get("app_root_path", scope.get("root_path", "")),
            ),
        )

    def url_for(self, name: str, /, *, job_id: str, **path_params: int) -> str:
        before, after = _route_path(self.app, name, tuple(sorted(path_params.items())))
        return f"{self.base_url.rstrip('/')}{before}{job_id}{after}"


# Per app: the routes a job links to, and the image indexes up to the most images a job has.
ROUTE_PATHS_CACHED = 64


@functools.lru_cache(maxsize=ROUTE_PATHS_CACHED)
def _route_path(
    app: Starlette, name: str, path_params: tuple[tuple[str, int], ...]
) -> tuple[str, str]:
    """The route's path, cut where a job's id goes."""
    path = app.url_path_for(name, job_id=_JOB_ID_SLOT, **dict(path_params))
    before, slot, after = path.partition(_JOB_ID_SLOT)
    if not slot:
        raise ValueError(f"route {name} takes no job id")
    return before, after


async def existing_job(job_id: str, request: Request) -> JobView:
    return await service_of(request).get(job_id, owner=request_owner(request))


async def stream_slot(request: Request) -> None:
    """Refuse a new event stream while this process holds its most, before any 200 starts."""
    service_of(request).hub.check_room()


def image_links(record: JobRecord, links: LinksAt, service: GenerationService) -> list[str]:
    """The job's image URLs: presigned when so configured, else the API's image route."""
    presigned = service.presigned_image_urls(record)
    if presigned is not None:
        return presigned
    return [
        links.url_for("get_image", job_id=record.id, index=i) for i in range(record.image_count)
    ]


def job_response(view: JobView, links: LinksAt, service: GenerationService) -> JobResponse:
    record = view.record
    return JobResponse(
        id=record.id,
        status=record.status,
        model=record.params.model,
        queue_position=view.queue_position,
        progress=record.progress,
        params=record.params,
        timings=record.timings,
        error=record.error,
        cancel_requested=record.cancel_requested,
        attempts=record.attempts,
        webhook=record.webhook,
        created_at=record.created_at,
        finished_at=record.finished_at,
        links=JobLinks(
            self=links.url_for("get_job", job_id=record.id),
            events=links.url_for("stream_job_events", job_id=record.id),
            images=image_links(record, links, service),
        ),
    )
