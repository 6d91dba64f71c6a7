from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from common.contract import GenerateRequest
from service.params import parse_prefer_wait
from service.routes.deps import Service, job_response
from service.schemas import ErrorResponse, JobResponse
from service.service import JobView

PREFER_WAIT_MAX_S = 60

router = APIRouter(prefix="/v1", tags=["generate"])


@router.post(
    "/generate",
    status_code=202,
    response_model=JobResponse,
    responses={
        200: {"model": JobResponse, "description": "Finished within the `Prefer: wait` time."},
        422: {
            "model": ErrorResponse,
            "description": "A parameter is out of bounds, or the model is unknown.",
        },
        429: {"model": ErrorResponse, "description": "The model's queue is full."},
        503: {
            "model": ErrorResponse,
            "description": "No worker has published a model yet, or Redis is unreachable.",
        },
    },
    summary="Queue an image generation job",
)
async def generate(
    body: GenerateRequest,
    request: Request,
    response: Response,
    service: Service,
    prefer: Annotated[
        str | None,
        Header(
            description=(
                f"RFC 7240 preference `wait=N` (0..{PREFER_WAIT_MAX_S}): hold the response up to "
                "N seconds and answer 200 with the finished job if it ends in time."
            )
        ),
    ] = None,
) -> JobResponse:
    wait_s = parse_prefer_wait(prefer, PREFER_WAIT_MAX_S)
    record = await service.submit(body)
    view = JobView(record)
    if wait_s:
        view = await service.wait(record.id, wait_s)
        response.headers["Preference-Applied"] = f"wait={wait_s}"
        if view.record.status.terminal:
            response.status_code = 200
    response.headers["Location"] = str(request.url_for("get_job", job_id=record.id))
    return job_response(view, request, service)
