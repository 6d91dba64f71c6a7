"""OpenAI's Images API: each request is a job on the same queues, answered when it ends."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from common.jobstore import JobRecord
from service.auth import request_owner
from service.errors import REDIS_DOWN_MESSAGE, REDIS_RETRY_AFTER_S, ApiError, unparsable_body
from service.openai_compat import (
    JOB_ID_HEADER,
    WAIT_MAX_S,
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    OpenAIError,
    OpenAIErrorResponse,
    from_api_error,
    invalid_request,
    reported_quality,
    to_generate_request,
    unfinished_error,
    with_quality,
)
from service.params import parse_prefer_wait
from service.routes.deps import (
    IDEMPOTENCY_KEY_HEADER,
    HeaderParam,
    LinksAt,
    image_links,
    service_of,
)
from service.service import GenerationService

log = logging.getLogger(__name__)


class OpenAIRoute(APIRoute):
    """A route whose every error is in OpenAI's shape, not this service's envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def openai_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except OpenAIError as exc:
                return exc.response()
            except RequestValidationError as exc:
                return invalid_request(exc.errors()).response()
            except HTTPException as exc:
                # FastAPI's own (a body it could not decode): in OpenAI's shape, not a 500.
                if (invalid := unparsable_body(exc)) is not None:
                    return invalid_request(invalid.errors()).response()
                return OpenAIError(exc.status_code, str(exc.detail), code="http_error").response()
            except ApiError as exc:
                return from_api_error(exc).response()
            except RedisError as exc:
                log.warning("redis unavailable: %s", exc)
                retry_after = {"Retry-After": str(REDIS_RETRY_AFTER_S)}
                return OpenAIError(
                    503, REDIS_DOWN_MESSAGE, code="not_ready", headers=retry_after
                ).response()
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                message = "internal error; the server log has details"
                return OpenAIError(500, message, code="internal_error").response()

        return openai_errors


router = APIRouter(prefix="/v1", tags=["openai"], route_class=OpenAIRoute)

PREFER = HeaderParam(
    "prefer",
    "Prefer",
    f"RFC 7240 `wait=N` (0..{WAIT_MAX_S}): wait at most N seconds for the job "
    f"(default {WAIT_MAX_S}), then answer 504 naming it.",
)

ERROR_STATUSES: dict[int | str, str] = {
    400: "Invalid request: `param` names the field (`size` for the size, `model`...).",
    409: "The job was canceled while this request waited.",
    401: "No valid API key (`Authorization: Bearer KEY`), where the service has keys.",
    413: "The body is larger than SD3SERVE_MAX_BODY_BYTES; the connection is closed.",
    429: "The API key's rate limit is reached, or the model's queue is full (`Retry-After`).",
    500: "The job failed; the message is its reason.",
    503: "No worker has published a model yet, or Redis is unreachable (`Retry-After`).",
    504: "The job did not finish in time; it goes on: poll `/v1/jobs/{job_id}`.",
    # Every error of this route is in OpenAI's shape; this also replaces FastAPI's own 422.
    "default": "Any other error, in the same shape.",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorResponse, "description": description}
    for status, description in ERROR_STATUSES.items()
}


async def image_data(
    record: JobRecord,
    body: ImageGenerationRequest,
    request: Request,
    service: GenerationService,
    owner: str | None,
) -> list[ImageData]:
    if body.response_format == "url":
        return [ImageData(url=url) for url in image_links(record, LinksAt.of(request), service)]
    data = []
    for i in range(record.image_count):
        image = await service.image(record.id, i, owner=owner)
        data.append(ImageData(b64_json=base64.b64encode(image.data).decode("ascii")))
    return data


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=ERRORS,
    summary="OpenAI's image generation: a job, answered with its images once it ends",
    openapi_extra={"parameters": [PREFER.openapi(), IDEMPOTENCY_KEY_HEADER.openapi()]},
)
async def create_image(
    body: ImageGenerationRequest,
    request: Request,
    response: Response,
) -> ImagesResponse:
    """Generate images from OpenAI's Images API body (the official SDK's `images.generate`).

    Each request is an ordinary job on the model's queue, visible under `/v1/jobs/{id}` (its
    id is in `x-sd3serve-job-id` and `job_id`); the answer waits for it to end. Our own
    parameters (`negative_prompt`, `seed`, `steps`, `guidance_scale`) ride in `extra_body`.
    Errors on this route have OpenAI's shape: `{"error": {"message", "type", "param",
    "code"}}`, with 400 for invalid input.
    """
    service, owner = service_of(request), request_owner(request)
    wait_s = parse_prefer_wait(PREFER.read(request), WAIT_MAX_S)
    idempotency_key = IDEMPOTENCY_KEY_HEADER.read(request)
    try:
        record = await service.submit(
            to_generate_request(body),
            owner=owner,
            idempotency_key=idempotency_key,
            # On each model record tried: a quality's steps depend on the model's defaults.
            adapt=partial(with_quality, body=body),
        )
    except ApiError as exc:
        raise from_api_error(exc, body) from exc

    job_url = LinksAt.of(request).url_for("get_job", job_id=record.id)
    waited_s = WAIT_MAX_S if wait_s is None else wait_s
    try:
        record = (await service.wait(record.id, waited_s, owner=owner)).record
        error = unfinished_error(record, job_url, waited_s)
        if error is not None:
            raise error
        data = await image_data(record, body, request, service, owner)
    # The job exists from here on: every error names it, so that the client follows it rather
    # than submit it again.
    except RedisError as exc:
        log.warning("redis unavailable: %s", exc)
        message = f"job {record.id}: {REDIS_DOWN_MESSAGE}"
        raise OpenAIError(503, message, code="not_ready", job_id=record.id) from exc
    except ApiError as exc:
        message = f"job {record.id}: {exc.message}"
        raise OpenAIError(exc.status, message, code=exc.code, job_id=record.id) from exc

    response.headers[JOB_ID_HEADER] = record.id
    if wait_s is not None:
        response.headers["Preference-Applied"] = f"wait={wait_s}"
    return ImagesResponse(
        created=int(record.finished_at or record.created_at),
        data=data,
        output_format=record.params.output_format,
        size=f"{record.params.width}x{record.params.height}",
        quality=reported_quality(body),
        job_id=record.id,
    )
