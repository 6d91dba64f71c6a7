"""The worker's Prometheus metrics, and the small HTTP server for them and the probes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 45, 60, 90, 120, 180, 300, 600)
# From a small model's step on a GPU (5 ms) to a real model's on a CPU (tens of seconds, minutes
# at 1024²); prompt encoding, T5-XXL and all, spans the same range.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)

# Every label is bounded: one model per worker, configured resolutions and step counts (the
# rest counted as "other"), and the five job states.
JOB_LABELS = ["model", "resolution", "steps"]
JOB_LATENCY = Histogram(
    "sd3serve_job_latency_seconds",
    "End-to-end job latency, from acceptance to the final state.",
    JOB_LABELS,
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "sd3serve_queue_wait_seconds",
    "Time a job waited in the queue before a worker started it.",
    JOB_LABELS,
    buckets=LATENCY_BUCKETS,
)
INFERENCE = Histogram(
    "sd3serve_inference_seconds",
    "Pipeline call time: text encoding, denoising and VAE decoding.",
    JOB_LABELS,
    buckets=LATENCY_BUCKETS,
)
STEP = Histogram(
    "sd3serve_step_seconds",
    "Time per denoising step.",
    ["model", "resolution"],
    buckets=STEP_BUCKETS,
)
PROMPT_ENCODE = Histogram(
    "sd3serve_prompt_encode_seconds",
    "Text encoding of a job's prompt and negative prompt (CLIP-L, CLIP-G, T5), before denoising.",
    ["model"],
    buckets=STEP_BUCKETS,
)
PROMPT_CACHE = Counter(
    "sd3serve_prompt_cache_lookups_total",
    "Lookups of a prompt text's embeddings (a job with guidance looks up its negative prompt "
    "too), by result: hit or miss.",
    ["model", "result"],
)
ENCODE = Histogram(
    "sd3serve_encode_seconds",
    "Encoding and storing a job's images.",
    ["model", "resolution"],
    buckets=LATENCY_BUCKETS,
)
BATCH_JOBS = Histogram(
    "sd3serve_batch_jobs",
    "Jobs run together in one pipeline call (cross-job batching; 1 when a job ran alone).",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32),
)
JOBS_FINISHED = Counter(
    "sd3serve_jobs_finished_total", "Jobs finished, by model and status.", ["model", "status"]
)
MODEL_LOAD = Gauge("sd3serve_model_load_seconds", "Time taken to load the pipeline.")
WARMUP = Gauge("sd3serve_warmup_seconds", "Time taken by the warm-up generation.")
READY = Gauge("sd3serve_worker_ready", "1 once the pipeline is loaded and warm.", ["model"])

OTHER = "other"


def resolution_label(width: int, height: int, known: frozenset[str]) -> str:
    """Keep label cardinality bounded: configured sizes by name, the rest as 'other'."""
    label = f"{width}x{height}"
    return label if label in known else OTHER


def steps_label(steps: int, known: frozenset[str]) -> str:
    label = str(steps)
    return label if label in known else OTHER


@dataclass(frozen=True)
class JobLabels:
    """How a worker labels its jobs' samples: its model, and the sizes and steps it keeps."""

    model: str
    resolutions: frozenset[str]
    steps: frozenset[str]

    def of(self, width: int, height: int, steps: int) -> tuple[str, str, str]:
        """(model, resolution, steps) label values of a job."""
        return (
            self.model,
            resolution_label(width, height, self.resolutions),
            steps_label(steps, self.steps),
        )


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # scrapes every few seconds would drown the worker's log


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


WsgiStart = Callable[[str, list[tuple[str, str]]], Any]


def start_http_server(
    host: str, port: int, warm: threading.Event, redis_answers: Callable[[], bool]
) -> WSGIServer:
    """Serve /metrics, /healthz and /readyz from a daemon thread; returns the bound server.

    /healthz is always 200 (the process is up: a long model load must not look like a hang,
    so it suits a liveness probe); /readyz is 200 only once the model is warm and Redis
    answers (a startup or readiness probe).
    """
    metrics_app = make_wsgi_app()

    def reply(start_response: WsgiStart, status: str, body: dict[str, Any]) -> list[bytes]:
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    def app(environ: dict[str, Any], start_response: WsgiStart) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return reply(start_response, "200 OK", {"status": "ok", "ready": warm.is_set()})
        if path == "/readyz":
            is_warm = warm.is_set()
            redis_ok = redis_answers()
            status = "200 OK" if is_warm and redis_ok else "503 Service Unavailable"
            return reply(start_response, status, {"warm": is_warm, "redis": redis_ok})
        if path == "/metrics":
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        error = {"code": "not_found", "message": "try /metrics, /healthz or /readyz"}
        return reply(start_response, "404 Not Found", {"error": error})

    server = make_server(
        host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
