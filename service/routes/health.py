from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import metrics
from service.routes.deps import get_service
from service.schemas import HealthResponse, ReadyResponse
from service.service import GenerationService

router = APIRouter(tags=["health"])
Service = Annotated[GenerationService, Depends(get_service)]


@router.get("/healthz", response_model=HealthResponse, summary="The process is up")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Redis down or no warm worker."}},
    summary="Redis reachable and at least one warm worker",
)
async def readyz(service: Service) -> JSONResponse:
    ready = await service.readiness()
    return JSONResponse(ready.model_dump(), status_code=200 if ready.ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def prometheus_metrics(service: Service) -> Response:
    ready = await service.readiness()
    metrics.READY_WORKERS.set(ready.workers)
    if ready.redis:
        metrics.QUEUE_DEPTH.set(await to_thread.run_sync(service.queue.depth))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
