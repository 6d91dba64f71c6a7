from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam
from fastapi.sse import EventSourceResponse, ServerSentEvent

from common.contract import MAX_IMAGES
from service.routes.deps import Service, existing_job, job_response
from service.schemas import ErrorResponse, JobResponse
from service.service import JobView

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such job (or it expired)."}
}


@router.get("/{job_id}", response_model=JobResponse, responses=NOT_FOUND, summary="A job's state")
async def get_job(job_id: str, request: Request, service: Service) -> JobResponse:
    return job_response(await service.get(job_id), request, service)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses=NOT_FOUND,
    summary="Server-Sent Events: each state change and denoising step, ending with the final state",
)
async def job_events(
    job_id: str, service: Service, job: Annotated[JobView, Depends(existing_job)]
) -> AsyncIterator[ServerSentEvent]:
    # The job is looked up by a dependency, before the stream starts, so that an unknown
    # job is a proper 404 rather than an error in the middle of a 200 stream.
    async for entry_id, kind, payload in service.events(job_id):
        yield ServerSentEvent(event=kind, data=payload, id=entry_id)


@router.delete(
    "/{job_id}",
    response_model=JobResponse,
    responses={
        **NOT_FOUND,
        202: {"model": JobResponse, "description": "Running: it stops at its next step."},
        409: {"model": ErrorResponse, "description": "The job has already finished."},
    },
    summary="Cancel a job: at once while queued, at the next denoising step while running",
)
async def cancel_job(
    job_id: str, request: Request, response: Response, service: Service
) -> JobResponse:
    view = await service.cancel(job_id)
    if not view.record.status.terminal:
        response.status_code = 202
    return job_response(view, request, service)


@router.get(
    "/{job_id}/images/{index}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        404: {"model": ErrorResponse, "description": "No such job or image."},
    },
    summary="A stored image's bytes",
)
async def get_image(
    job_id: str,
    index: Annotated[int, PathParam(ge=0, le=MAX_IMAGES - 1, description="Image index, 0-based.")],
    service: Service,
) -> Response:
    image = await service.image(job_id, index)
    # An image never changes, and is kept as long as its job.
    max_age = service.settings.result_ttl_s
    return Response(
        image.data,
        media_type=image.content_type,
        headers={"Cache-Control": f"private, max-age={max_age}, immutable"},
    )
