"""Shared route helpers: reaching the service and shaping a job for the wire."""

from __future__ import annotations

from fastapi import Request

from service.schemas import JobLinks, JobResponse
from service.service import GenerationService, JobView


def get_service(request: Request) -> GenerationService:
    service: GenerationService = request.app.state.service
    return service


async def existing_job(job_id: str, request: Request) -> JobView:
    return await get_service(request).get(job_id)


def job_response(view: JobView, request: Request) -> JobResponse:
    record = view.record
    images = [
        str(request.url_for("get_image", job_id=record.id, index=i))
        for i in range(record.image_count)
    ]
    return JobResponse(
        id=record.id,
        status=record.status,
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
            events=str(request.url_for("job_events", job_id=record.id)),
            images=images,
        ),
    )
