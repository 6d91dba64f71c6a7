from __future__ import annotations

from fastapi import APIRouter, Request, Response

from common.contract import GenerateRequest
from service.auth import request_owner
from service.openapi import error
from service.params import parse_prefer_wait
from service.routes.deps import (
    IDEMPOTENCY_KEY_HEADER,
    HeaderParam,
    LinksAt,
    job_response,
    service_of,
)
from service.schemas import EXAMPLE_JOB_URL, JobResponse
from service.service import JobView
from service.webhooks import accept_webhook

PREFER_WAIT_MAX_S = 60

# The headers of an accepted job (202 queued or running, 200 finished).
ACCEPTED_HEADERS = {
    "Location": {
        "description": "The job's URL (`links.self`).",
        "required": True,
        "schema": {"type": "string", "format": "uri"},
        "example": EXAMPLE_JOB_URL,
    },
    "Preference-Applied": {
        "description": "`wait=N`, echoed when the request's `Prefer: wait=N` was honoured.",
        "schema": {"type": "string"},
        "example": "wait=60",
    },
}

PREFER = HeaderParam(
    "prefer",
    "Prefer",
    f"RFC 7240 preference `wait=N` (0..{PREFER_WAIT_MAX_S}): hold the response up to N seconds "
    "and answer 200 with the finished job if it ends in time.",
)

router = APIRouter(prefix="/v1", tags=["generate"])


@router.post(
    "/generate",
    status_code=202,
    response_model=JobResponse,
    response_description="Queued (or running, when `Prefer: wait` ran out): the job.",
    responses={
        200: {
            "model": JobResponse,
            "description": "Finished within the `Prefer: wait` time: the final job.",
            "headers": ACCEPTED_HEADERS,
        },
        202: {"headers": ACCEPTED_HEADERS},
        422: error(
            "A parameter is out of bounds, the `Prefer` header is malformed, the model is "
            "unknown, or the webhook is refused (webhooks not enabled, a scheme other than "
            "http(s), a host that does not resolve or resolves to a non-public address); "
            "`error.field` names the field.",
            "invalid_parameter",
            "width: Input should be less than or equal to 4096",
            "width",
            "Input should be less than or equal to 4096",
        ),
        429: error(
            "The model's queue is full (`queue_full`), or the API key's rate limit is reached "
            "(`rate_limited`); retry after `Retry-After` seconds.",
            "queue_full",
            "100 jobs are queued for sd3-scenes, the most this service accepts; retry later",
        ),
        503: error(
            "No worker has published a model yet, or Redis is unreachable; retry after "
            "`Retry-After` seconds.",
            "not_ready",
            "no worker has published a model yet; retry shortly",
        ),
    },
    summary="Queue an image generation job",
    openapi_extra={"parameters": [PREFER.openapi(), IDEMPOTENCY_KEY_HEADER.openapi()]},
)
async def generate(
    body: GenerateRequest,
    request: Request,
    response: Response,
) -> JobResponse:
    """Validate a prompt job against its model's limits and queue it for that model.

    Fields left out take the model's defaults; the job's `params` report what it runs with,
    the seed included. The answer is 202 with the job and its `Location`; with `Prefer: wait=N`
    the request is held up to N seconds and answers 200 with the finished job if it ends in
    time (a failed generation is a job state, not an HTTP error).
    """
    service, owner = service_of(request), request_owner(request)
    wait_s = parse_prefer_wait(PREFER.read(request), PREFER_WAIT_MAX_S)
    idempotency_key = IDEMPOTENCY_KEY_HEADER.read(request)
    links = LinksAt.of(request)
    webhook = None
    if body.webhook is not None:
        webhook = await accept_webhook(body.webhook, service.settings, links.base_url)
    record = await service.submit(
        body, webhook=webhook, owner=owner, idempotency_key=idempotency_key
    )
    view = JobView(record)
    # A preference, not a demand: with this process's event streams all taken, answer at once.
    if wait_s and service.hub.has_room():
        view = await service.wait(record.id, wait_s, owner=owner)
        response.headers["Preference-Applied"] = f"wait={wait_s}"
        if view.record.status.terminal:
            response.status_code = 200
    job = job_response(view, links, service)
    response.headers["Location"] = job.links.self
    return job
