"""The FastAPI application factory: wiring only; the logic lives in GenerationService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from common.settings import load_settings
from service.errors import install_error_handlers
from service.metrics import HttpMetricsMiddleware
from service.openapi import install_openapi, operation_id
from service.queue import JobQueue
from service.registry import ModelRegistry
from service.routes import generate, health, images, jobs, models
from service.service import GenerationService
from service.settings import ApiSettings
from service.store import ApiJobStore

DESCRIPTION = """Generate images with Stable Diffusion 3-class models.

POST a prompt to `/v1/generate`; the job is queued for its model and a warm GPU worker of that
model runs it. Follow it with `GET /v1/jobs/{id}` or its Server-Sent Events, then download the
images it links to. `GET /v1/models` lists the models, their limits and their workers.
Every error has the shape `{"error": {"code", "message", "field", "details"}}`.
"""


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or load_settings(ApiSettings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = AsyncRedis.from_url(str(settings.redis_url), decode_responses=True)
        rq_redis = Redis.from_url(str(settings.redis_url))  # RQ is synchronous and wants bytes
        queue = JobQueue(
            rq_redis,
            job_timeout_s=settings.job_timeout_s,
            retries=settings.job_retries,
            ttl_s=settings.result_ttl_s,
        )
        app.state.service = GenerationService(
            settings,
            ApiJobStore(redis, settings.result_ttl_s),
            queue,
            ModelRegistry(redis),
            settings.open_results(),
        )
        try:
            yield
        finally:
            await redis.aclose()
            rq_redis.close()

    app = FastAPI(
        title="sd3-serve",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(HttpMetricsMiddleware)
    for module in (generate, jobs, models, images, health):
        app.include_router(module.router)
    return app
