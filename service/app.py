"""The FastAPI application factory: wiring only; the logic lives in GenerationService."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from common.gc_freeze import freeze_startup_objects
from common.settings import load_settings
from service.auth import ApiKeyMiddleware, Authenticator, load_key_ring
from service.body_limit import BodyLimitMiddleware
from service.errors import install_error_handlers
from service.fanout import EventHub
from service.metrics import HttpMetricsMiddleware
from service.openapi import install_openapi, operation_id
from service.queue import JobQueue, QueuePositions
from service.redis_pool import BoundedConnectionPool
from service.registry import ModelRegistry
from service.routes import generate, health, images, jobs, models
from service.service import GenerationService
from service.settings import ApiSettings
from service.store import ApiJobStore
from service.webhooks import WebhookSender

DESCRIPTION = """Generate images with Stable Diffusion 3-class models.

POST a prompt to `/v1/generate`; the job is queued for its model and a warm GPU worker of that
model runs it. Follow it with `GET /v1/jobs/{id}` or its Server-Sent Events, then download the
images it links to. `GET /v1/models` lists the models, their limits and their workers.
Every error has the shape `{"error": {"code", "message", "field", "details"}}`.
"""


# Through a Redis outage the API answers 503 at once (errors.py) and recovers by itself once
# Redis is back: a command that fails on a connection is retried on a fresh one (so one
# pooled connection the restart killed costs no request), and a connection idle this long is
# pinged before use. Set here, not left to redis-py, whose defaults differ across versions.
REDIS_RETRIES = 2
REDIS_HEALTH_CHECK_S = 30
# Commands are short (event streams share one reader, service.fanout), so a burst waits a
# moment for a connection rather than failing: redis-py's default pool refuses at once past
# 100 connections, which a thousand streams' periodic checks could reach.
REDIS_POOL_SIZE = 128
REDIS_POOL_WAIT_S = 5


def _redis_backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.2, base=0.02)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or load_settings(ApiSettings)
    # Read here, so that a bad keys file stops the API before it serves anything.
    ring = load_key_ring(settings.api_keys_file, settings.rate_limit)
    auth: Authenticator | None = None  # made below, once the app knows its open paths

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = BoundedConnectionPool.from_url(
            str(settings.redis_url),
            max_connections=REDIS_POOL_SIZE,
            timeout=REDIS_POOL_WAIT_S,
            decode_responses=True,
            retry=AsyncRetry(_redis_backoff(), REDIS_RETRIES),
            health_check_interval=REDIS_HEALTH_CHECK_S,
        )
        redis = AsyncRedis(connection_pool=pool)
        rq_redis = Redis.from_url(  # RQ is synchronous and wants bytes
            str(settings.redis_url),
            retry=Retry(_redis_backoff(), REDIS_RETRIES),
            health_check_interval=REDIS_HEALTH_CHECK_S,
        )
        queue = JobQueue(
            rq_redis,
            job_timeout_s=settings.job_timeout_s,
            ttl_s=settings.result_ttl_s,
        )
        hub = EventHub(str(settings.redis_url), settings.max_streams)
        app.state.service = GenerationService(
            settings,
            ApiJobStore(redis, settings.result_ttl_s),
            queue,
            ModelRegistry(redis),
            settings.open_results(),
            hub,
            QueuePositions(redis),
        )
        webhooks = WebhookSender.start(app, redis, settings)
        if auth is not None:
            auth.connect(redis)
        freeze_startup_objects()
        try:
            yield
        finally:
            if webhooks is not None:
                await webhooks.stop()
            await hub.close()
            await redis.aclose()
            await pool.aclose()
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
    openai_paths = {route.path for route in images.router.routes if isinstance(route, APIRoute)}
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, openai_paths=openai_paths
    )
    if ring is not None:
        # Probes and the API's description stay open; any other path needs a key.
        open_paths = {route.path for route in health.router.routes if isinstance(route, APIRoute)}
        docs = (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
        open_paths |= {url for url in docs if url}
        auth = Authenticator(ring, open_paths, metrics_require_key=settings.metrics_require_key)
        # Outside the body limit: a request without a key is refused before its body is read.
        app.add_middleware(ApiKeyMiddleware, auth=auth, openai_paths=openai_paths)
    # Outermost, so that it counts the refusals of the middlewares inside it too.
    app.add_middleware(HttpMetricsMiddleware)
    for module in (generate, jobs, models, images, health):
        app.include_router(module.router)
    return app
