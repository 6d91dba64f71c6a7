"""Session fixtures: the tiny model, and one live stack shared by the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.dev import wait_until
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


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled tiny model, built once through the real CLI and loaded via from_pretrained."""
    out = tmp_path_factory.mktemp("model") / TINY_MODEL
    subprocess.run(
        [sys.executable, "-m", "service", "build-model", str(out)], check=True, capture_output=True
    )
    return out


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
