"""Session fixtures: the tiny model, and one live stack shared by the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from service.dev import Stack, wait_until
from tests.harness import (
    START_TIMEOUT_S,
    Api,
    Stackup,
    base_env,
    start_api,
    start_redis,
    start_worker,
    worker_count,
)

# Nothing in the tests may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled tiny model, built once through the real CLI and loaded via from_pretrained."""
    out = tmp_path_factory.mktemp("model") / "tiny-sd3"
    subprocess.run(
        [sys.executable, "-m", "service", "build-model", str(out)], check=True, capture_output=True
    )
    return out


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Stackup]:
    """Redis, the API and one warm worker, shared by the end-to-end tests."""
    stack = Stack()
    work = tmp_path_factory.mktemp("live")
    try:
        redis_url = start_redis(stack, work)
        env = base_env(redis_url, work / "results", model_dir)
        api = start_api(stack, env)
        metrics = start_worker(stack, env, "test-worker").metrics_url
        wait_until(lambda: worker_count(api) == 1, stack, "a warm worker", START_TIMEOUT_S)
        with closing(api.client):
            yield Stackup(api, metrics, redis_url, stack)
    finally:
        stack.stop()


@pytest.fixture
def api(live: Stackup) -> Api:
    return live.api
