from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BeforeValidator

from common.contract import MAX_IMAGES, OutputFormat
from service.auth import request_owner
from service.openapi import BINARY, error
from service.routes.deps import (
    LinksAt,
    existing_job,
    job_response,
    service_of,
    stream_slot,
)
from service.schemas import EXAMPLE_JOB_ID, JobResponse
from service.service import JobView

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

CANONICAL_INDEX = re.compile(r"0|[1-9][0-9]*")


def canonical_index(value: object) -> object:
    """Only the one spelling of an index: pydantic's int parsing also takes "+0", " 0", "00",
    "0_0" and "0.0", each another URL for the same image."""
    if isinstance(value, str) and not CANONICAL_INDEX.fullmatch(value):
        raise ValueError("write the index in ASCII digits, without sign, spaces or leading zeros")
    return value


JOB_NOT_FOUND = error(
    "No such job (or it expired).",
    "job_not_found",
    f"no job '{EXAMPLE_JOB_ID}'; jobs are kept for 86400 s",
)
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: JOB_NOT_FOUND}

EVENTS_DESCRIPTION = """\
The job's events, from its start, in order, ending with its final state (then the stream
closes). Each event has an `id` (its position in the job's history), an `event` type and a JSON
`data` line:

- `status`: `{"status": "queued" | "running" | "succeeded" | "failed" | "canceled",
  "error"?: string}`, once per state change; `error` says why a job failed or was canceled.
- `progress`: `{"step": int, "total": int}`, once per denoising step.

Comment lines (`: ping`) keep an idle connection open.
"""

EVENTS_EXAMPLE = """\
event: status
data: {"status": "queued"}
id: 1767225600000-0

event: status
data: {"status": "running"}
id: 1767225600012-0

event: progress
data: {"step": 1, "total": 28}
id: 1767225600080-0

event: status
data: {"status": "succeeded"}
id: 1767225601870-0

"""


@router.get(
    "/{job_id}",
    response_model=JobResponse,
    response_description="The job.",
    responses=NOT_FOUND,
    summary="A job's state",
)
async def get_job(job_id: str, request: Request) -> JobResponse:
    """A job's status, queue position, progress, parameters (seed included), timings, error and
    links: to itself, to its events and to its images once it has succeeded."""
    service = service_of(request)
    view = await service.get(job_id, owner=request_owner(request))
    return job_response(view, LinksAt.of(request), service)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "The job's event stream.",
            "content": {
                "text/event-stream": {
                    "schema": {"type": "string", "description": EVENTS_DESCRIPTION},
                    "example": EVENTS_EXAMPLE,
                }
            },
        },
        **NOT_FOUND,
        503: error(
            "This API process holds its most event streams (SD3SERVE_MAX_STREAMS), or Redis is "
            "unreachable; retry after `Retry-After` seconds.",
            "too_many_streams",
            "this API process already streams 1000 jobs, its limit; retry shortly or poll "
            "GET /v1/jobs/{id}",
        ),
    },
    summary="Server-Sent Events: each state change and denoising step, ending with the final state",
    dependencies=[Depends(stream_slot)],
)
async def stream_job_events(
    job_id: str, request: Request, job: Annotated[JobView, Depends(existing_job)]
) -> AsyncIterator[ServerSentEvent]:
    """Follow a job as Server-Sent Events: its history from the start, then live, until its
    final state. Events are `status` (each state change) and `progress` (each denoising step);
    the response's schema describes them. An unknown job is a JSON 404, before any stream."""
    # The job is looked up by a dependency, before the stream starts, so that an unknown
    # job is a proper 404 rather than an error in the middle of a 200 stream.
    events = service_of(request).events(job_id, owner=request_owner(request))
    async for entry_id, kind, payload in events:
        yield ServerSentEvent(event=kind, data=payload, id=entry_id)


@router.delete(
    "/{job_id}",
    response_model=JobResponse,
    response_description="Canceled while queued: the job, now `canceled`.",
    responses={
        202: {
            "model": JobResponse,
            "description": "Running: `cancel_requested` is set and it stops at its next step.",
        },
        **NOT_FOUND,
        409: error(
            "The job has already finished.",
            "job_finished",
            f"job {EXAMPLE_JOB_ID} already succeeded; nothing to cancel",
        ),
    },
    summary="Cancel a job: at once while queued, at the next denoising step while running",
)
async def cancel_job(job_id: str, request: Request, response: Response) -> JobResponse:
    """Cancel a job. A queued job is removed from its queue and answers 200, `canceled`; a
    running one answers 202 and stops at its next denoising step (follow its events for the
    final state); a finished one answers 409."""
    service = service_of(request)
    view = await service.cancel(job_id, owner=request_owner(request))
    if not view.record.status.terminal:
        response.status_code = 202
    return job_response(view, LinksAt.of(request), service)


@router.get(
    "/{job_id}/images/{index}",
    response_class=Response,
    responses={
        200: {
            "description": "The image, in the job's `output_format`.",
            "headers": {
                "Cache-Control": {
                    "description": "Images never change: `private, max-age=<TTL>, immutable`.",
                    "schema": {"type": "string"},
                }
            },
            "content": {fmt.content_type: {"schema": BINARY} for fmt in OutputFormat},
        },
        404: error(
            "No such job or image: unknown or expired, not succeeded, or the index is past the "
            "job's `num_images`.",
            "image_not_found",
            f"job {EXAMPLE_JOB_ID} has images 0..0; got 1",
            "index",
        ),
    },
    summary="A stored image's bytes",
)
async def get_image(
    job_id: str,
    index: Annotated[
        int,
        # First: after a validator, FastAPI writes its bounds into the document as `ge`/`le`,
        # which are not JSON Schema, rather than `minimum`/`maximum`.
        PathParam(ge=0, le=MAX_IMAGES - 1, description="Image index, 0-based."),
        BeforeValidator(canonical_index),
    ],
    request: Request,
) -> Response:
    """The bytes of a succeeded job's image `index` (0-based), with its content type: PNG (its
    parameters in a `parameters` text chunk), JPEG or WebP. With presigned result URLs the
    job's `links.images` point into the object store instead."""
    service = service_of(request)
    image = await service.image(job_id, index, owner=request_owner(request))
    # An image never changes, and is kept as long as its job.
    max_age = service.settings.result_ttl_s
    return Response(
        image.data,
        media_type=image.content_type,
        headers={"Cache-Control": f"private, max-age={max_age}, immutable"},
    )
