from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service import metrics
from service.errors import REDIS_RETRY_AFTER_S
from service.openapi import REDIS_DOWN
from service.routes.deps import service_of
from service.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=HealthResponse,
    response_description="The process is up.",
    summary="The process is up",
)
async def healthz() -> HealthResponse:
    """Liveness: the API process answers. It asks nothing of Redis or the workers."""
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    response_description="Redis answers: jobs can be accepted.",
    responses={503: {"model": ReadyResponse, "description": "Redis is unreachable."}},
    summary="Redis answers, so jobs can be accepted (with or without a warm worker)",
)
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 when Redis answers, else 503 (with `Retry-After`). A model whose workers
    are all down still takes jobs, so warm workers are counted (`workers`) but not required."""
    ready = await service_of(request).readiness()
    if ready.ready:
        return JSONResponse(ready.model_dump())
    headers = {"Retry-After": str(REDIS_RETRY_AFTER_S)}
    return JSONResponse(ready.model_dump(), status_code=503, headers=headers)


@router.get(
    "/metrics",
    name="metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        # The model gauges read Redis, which may go away between the check and the read.
        503: REDIS_DOWN,
    },
    summary="Prometheus metrics",
)
async def prometheus_metrics(request: Request) -> Response:
    """The API's Prometheus metrics: HTTP requests and their latency and, while Redis answers,
    each model's warm workers and queue depth."""
    service = service_of(request)
    ready = await service.readiness()
    if ready.redis:
        for card in await service.list_models():
            metrics.READY_WORKERS.labels(card.id).set(card.workers_ready)
            metrics.QUEUE_DEPTH.labels(card.id).set(card.queue_depth)
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
