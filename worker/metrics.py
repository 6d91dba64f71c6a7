"""The worker's Prometheus metrics and the small HTTP server exposing them with /healthz."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 45, 60, 90, 120, 180, 300, 600)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)

JOB_LATENCY = Histogram(
    "sd3serve_job_latency_seconds",
    "End-to-end job latency, from acceptance to the final state.",
    ["resolution", "steps"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "sd3serve_queue_wait_seconds",
    "Time a job waited in the queue before a worker started it.",
    ["resolution", "steps"],
    buckets=LATENCY_BUCKETS,
)
INFERENCE = Histogram(
    "sd3serve_inference_seconds",
    "Pipeline call time: text encoding, denoising and VAE decoding.",
    ["resolution", "steps"],
    buckets=LATENCY_BUCKETS,
)
STEP = Histogram(
    "sd3serve_step_seconds", "Time per denoising step.", ["resolution"], buckets=STEP_BUCKETS
)
ENCODE = Histogram(
    "sd3serve_encode_seconds",
    "Encoding and storing a job's images.",
    ["resolution"],
    buckets=LATENCY_BUCKETS,
)
JOBS_FINISHED = Counter("sd3serve_jobs_finished_total", "Jobs finished, by status.", ["status"])
MODEL_LOAD = Gauge("sd3serve_model_load_seconds", "Time taken to load the pipeline.")
WARMUP = Gauge("sd3serve_warmup_seconds", "Time taken by the warm-up generation.")
READY = Gauge("sd3serve_worker_ready", "1 once the pipeline is loaded and warm.")


def resolution_label(width: int, height: int, known: frozenset[str]) -> str:
    """Keep label cardinality bounded: configured sizes by name, the rest as 'other'."""
    label = f"{width}x{height}"
    return label if label in known else "other"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # scrapes every few seconds would drown the worker's log


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


WsgiStart = Callable[[str, list[tuple[str, str]]], Any]


def start_http_server(host: str, port: int, ready: threading.Event) -> WSGIServer:
    """Serve /metrics and /healthz from a daemon thread; returns the server (its port is bound)."""
    metrics_app = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: WsgiStart) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            # Always 200: the process is up. A long model load must not look like a hang.
            body = json.dumps({"status": "ok", "ready": ready.is_set()}).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if path == "/metrics":
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"error": {"code": "not_found", "message": "try /metrics or /healthz"}}']

    server = make_server(
        host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
