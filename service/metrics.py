"""The API's Prometheus metrics: HTTP traffic, and per model queue depth and warm workers."""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# prometheus_client reads this at import: with several API processes each writes its samples to
# files there, and a scrape of any process sums them all.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

HTTP_REQUESTS = Counter(
    "sd3serve_http_requests_total", "HTTP requests, by route and status code.", ["route", "status"]
)
HTTP_LATENCY = Histogram(
    "sd3serve_http_request_duration_seconds",
    "Time to the response's headers, by route.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# Set by whichever process serves a scrape; across processes the latest value is the truth.
QUEUE_DEPTH = Gauge(
    "sd3serve_queue_depth",
    "Jobs waiting in the model's queue.",
    ["model"],
    multiprocess_mode="mostrecent",
)
READY_WORKERS = Gauge(
    "sd3serve_ready_workers",
    "The model's warm workers with a live heartbeat.",
    ["model"],
    multiprocess_mode="mostrecent",
)


def exposition() -> bytes:
    """The metrics page: this process's, or all API processes' in multiprocess mode."""
    if MULTIPROC_DIR_ENV not in os.environ:
        return generate_latest()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)


class HttpMetricsMiddleware:
    """Counts requests by route template, so job ids never become label values."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = scope.get("route")
                label = getattr(route, "path", "unmatched")
                HTTP_LATENCY.labels(label).observe(time.perf_counter() - started)
                HTTP_REQUESTS.labels(label, str(status)).inc()
            await send(message)

        await self.app(scope, receive, send_wrapper)
