"""Starting the real parts: redis-server, the API under uvicorn, worker processes.

Processes are started with the same `Stack` that `sd3-serve dev` uses, and every wait polls a
real readiness signal with a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from common.settings import env_var
from service import dev
from service.dev import Stack, free_port, wait_until

START_TIMEOUT_S = 120
# The random tiny model's folder, and so its model name.
TINY_MODEL = "tiny-sd3"
# The tiny model's native 64×64 would cap a job at 4 × 64² pixels by default; the tests' slow
# jobs (one 384×384 image) need more: one image at its largest size, 512×512.
TEST_MAX_PIXELS = 512 * 512
# The workers' dtype, named: `auto` picks bfloat16 on a CPU with native bfloat16 (AVX512-BF16,
# AMX), so what the tests compare (a batch's pixels within 1/255 of the job alone, the dtype a
# model reports) would depend on the machine running them.
TEST_DTYPE = "float32"


@dataclass
class Api:
    url: str
    client: httpx.Client


@dataclass
class Deployment:
    """A private Redis and API (and, for `live`, a warm worker) for a group of tests."""

    stack: Stack
    api: Api
    env: dict[str, str]
    redis_url: str
    worker_metrics_url: str = ""


def start_redis(stack: Stack, workdir: Path, port: int | None = None) -> str:
    return dev.start_redis(stack, workdir, dict(os.environ), port)


def settings_env(**settings: object) -> dict[str, str]:
    """Environment variables for settings given by field name: redis_url=... -> SD3SERVE_..."""
    return {env_var(name): str(value) for name, value in settings.items()}


def base_env(redis_url: str, results_dir: Path, model_dir: Path) -> dict[str, str]:
    return (
        dict(os.environ)
        | settings_env(
            redis_url=redis_url,
            result_store=f"file://{results_dir}",
            model=model_dir,
            max_pixels=TEST_MAX_PIXELS,
            torch_dtype=TEST_DTYPE,
        )
        | {"PYTHONUNBUFFERED": "1"}
    )


def start_api(stack: Stack, env: dict[str, str]) -> Api:
    url = dev.start_api(stack, env, "127.0.0.1", free_port())
    return Api(url, httpx.Client(base_url=url, timeout=120))


@dataclass
class Worker:
    metrics_url: str
    process: subprocess.Popen[bytes]


def start_worker(stack: Stack, env: dict[str, str], name: str) -> Worker:
    process, metrics_url = dev.start_worker(stack, env, name)
    return Worker(metrics_url, process)


def worker_count(api: Api) -> int:
    return int(api.client.get("/readyz").json()["workers"])


def poll(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    wait_until(check, None, what, timeout_s)


@contextmanager
def deployment(
    work: Path, model_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[Deployment]:
    """Redis and the API, stopped (with whatever the tests added to the stack) on exit."""
    stack = Stack()
    try:
        redis_url = start_redis(stack, work)
        env = base_env(redis_url, work / "results", model_dir) | (extra_env or {})
        api = start_api(stack, env)
        with closing(api.client):
            yield Deployment(stack, api, env, redis_url)
    finally:
        stack.stop()
