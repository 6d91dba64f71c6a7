from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service import metrics
from service.routes.deps import Service
from service.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, summary="The process is up")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Redis is unreachable."}},
    summary="Redis answers, so jobs can be accepted (with or without a warm worker)",
)
async def readyz(service: Service) -> JSONResponse:
    ready = await service.readiness()
    return JSONResponse(ready.model_dump(), status_code=200 if ready.ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def prometheus_metrics(service: Service) -> Response:
    ready = await service.readiness()
    if ready.redis:
        for card in await service.list_models():
            metrics.READY_WORKERS.labels(card.id).set(card.workers_ready)
            metrics.QUEUE_DEPTH.labels(card.id).set(card.queue_depth)
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
