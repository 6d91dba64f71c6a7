"""Shared route helpers: reaching the service and shaping a job for the wire."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from common.jobstore import JobRecord
from service.schemas import JobLinks, JobResponse
from service.service import GenerationService, JobView


def get_service(request: Request) -> GenerationService:
    service: GenerationService = request.app.state.service
    return service


Service = Annotated[GenerationService, Depends(get_service)]
"""The one declaration of the service dependency, for every route."""


async def existing_job(job_id: str, service: Service) -> JobView:
    return await service.get(job_id)


def image_links(record: JobRecord, request: Request, service: GenerationService) -> list[str]:
    """The job's image URLs: presigned when so configured, else the API's image route."""
    presigned = service.presigned_image_urls(record)
    if presigned is not None:
        return presigned
    return [
        str(request.url_for("get_image", job_id=record.id, index=i))
        for i in range(record.image_count)
    ]


def job_response(view: JobView, request: Request, service: GenerationService) -> JobResponse:
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
        created_at=record.created_at,
        finished_at=record.finished_at,
        links=JobLinks(
            self=str(request.url_for("get_job", job_id=record.id)),
            events=str(request.url_for("stream_job_events", job_id=record.id)),
            images=image_links(record, request, service),
        ),
    )
