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
        # Each (route, status)'s samples, found once: prometheus_client's `labels` takes a lock
        # and builds the key on every call. Bounded: routes are templates, statuses few.
        self._samples: dict[tuple[str, int], tuple[Histogram, Counter]] = {}

    def _samples_of(self, route: str, status: int) -> tuple[Histogram, Counter]:
        samples = self._samples.get((route, status))
        if samples is None:
            samples = HTTP_LATENCY.labels(route), HTTP_REQUESTS.labels(route, str(status))
            self._samples[route, status] = samples
        return samples

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                latency, requests = self._samples_of(
                    getattr(route, "path", "unmatched"), message["status"]
                )
                latency.observe(time.perf_counter() - started)
                requests.inc()
            await send(message)

        await self.app(scope, receive, send_wrapper)
