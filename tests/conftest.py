"""Session fixtures: the tiny model, and one live stack shared by the end-to-end tests; and a
private redis-server per module for the tests of Redis state transitions."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from service import dev
from service.dev import Stack, wait_until
from tests.harness import (
    START_TIMEOUT_S,
    TINY_MODEL,
    Api,
    Deployment,
    deployment,
    start_worker,
    worker_count,
)

# Nothing in the tests may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


# The modules that take longest, run first: under xdist (`-n`, `--dist loadfile` and
# `--no-loadscope-reorder` in pyproject.toml) each module goes whole to one worker, in this order,
# so the long ones do not start last and leave the other worker idle at the end. Measured on the
# 2-core CI machine; a module not named keeps its place after these.
SLOW_FIRST = (
    "tests/training/test_training_command.py",
    "tests/test_processes.py",
    "tests/test_docker.py",
    "tests/test_worker_lifecycle.py",
    "tests/test_real_arch.py",
    "tests/test_generate_flow.py",
    "tests/test_webhooks.py",
    "tests/test_scale_out.py",
    "tests/training/test_conditioning.py",
    "tests/training/test_evaluation.py",
    "tests/test_s3_results.py",
    "tests/test_schemathesis.py",
    "tests/test_openai_images.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):
        return  # not an xdist worker: collection order as is

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order within a module, and of the rest, is kept


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled tiny model, built once through the real CLI and loaded via from_pretrained.

    Under xdist it is built once for the run, by whichever worker asks first, in the run's
    temporary folder that all workers share; the others wait on the lock and load the same one.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        out = tmp_path_factory.mktemp("model") / TINY_MODEL
        _build_model(out)
        return out
    shared = tmp_path_factory.getbasetemp().parent  # pytest-N, the parent of each popen-gwN
    out = shared / "model" / TINY_MODEL
    with (shared / "model.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "model.built").exists():
            _build_model(out)
            (shared / "model.built").touch()
    return out


def _build_model(out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "service", "build-model", str(out)], check=True, capture_output=True
    )


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Deployment]:
    """Redis, the API and one warm worker, shared by the end-to-end tests."""
    with deployment(tmp_path_factory.mktemp("live"), model_dir) as live:
        live.worker_metrics_url = start_worker(live.stack, live.env, "test-worker").metrics_url
        wait_until(
            lambda: worker_count(live.api) == 1, live.stack, "a warm worker", START_TIMEOUT_S
        )
        yield live


@pytest.fixture
def api(live: Deployment) -> Api:
    return live.api


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of the module's own, configured as production's (service.dev)."""
    stack = Stack()
    try:
        yield dev.start_redis(stack, tmp_path_factory.mktemp("redis"), dict(os.environ))
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def r(redis_url: str) -> Iterator[Redis]:
    with Redis.from_url(redis_url, decode_responses=True) as client:
        yield client
