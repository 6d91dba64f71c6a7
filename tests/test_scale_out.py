"""Scaling out: several models on one Redis, each served by its own workers, and model records
that come back by themselves after Redis loses them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from redis import Redis

from service.dev import Stack
from tests.harness import (
    TINY_MODEL,
    Deployment,
    Worker,
    base_env,
    deployment,
    poll,
    settings_env,
    start_api,
    start_redis,
    start_worker,
    worker_count,
)
from tests.helpers import fetch_image, submit

pytestmark = pytest.mark.stack

TINY = TINY_MODEL
BUNDLED = "sd3-scenes"


@pytest.fixture(scope="module")
def two_models(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[tuple[Deployment, Worker, Worker]]:
    """One Redis and one API; a worker of the tiny model and one of the bundled model."""
    with deployment(tmp_path_factory.mktemp("two-models"), model_dir) as shared:
        tiny = start_worker(shared.stack, shared.env, "tiny-worker")
        bundled = start_worker(
            shared.stack, shared.env | settings_env(model="bundled"), "bundled-worker"
        )
        poll(lambda: worker_count(shared.api) == 2, "both workers to be warm", 180)
        yield shared, tiny, bundled


def finished_jobs(worker: Worker) -> str:
    return httpx.get(f"{worker.metrics_url}/metrics").text


def test_each_job_runs_on_its_own_models_worker(
    two_models: tuple[Deployment, Worker, Worker],
) -> None:
    shared, tiny, bundled = two_models
    api = shared.api
    listing = api.client.get("/v1/models").json()["data"]
    assert [(m["id"], m["workers_ready"]) for m in listing] == [(BUNDLED, 1), (TINY, 1)]
    by_id = {m["id"]: m for m in listing}
    assert by_id[BUNDLED]["source"] == "bundled"
    assert by_id[BUNDLED]["default_guidance_scale"] == 2.0  # its own sd3_serve.json

    small = submit(api, prefer="wait=60", model=TINY, prompt="a red circle", steps=2)
    scene = submit(
        api,
        prefer="wait=60",
        model=BUNDLED,
        prompt="a large blue square in the center on a white background",
        steps=4,
    )
    for reply, model in ((small, TINY), (scene, BUNDLED)):
        job = reply.json()
        assert reply.status_code == 200 and job["status"] == "succeeded", job
        assert job["model"] == job["params"]["model"] == model
        image, _ = fetch_image(api, job["links"]["images"][0])
        assert json.loads(image.info["parameters"])["model"] == model
    # Defaults are the chosen model's: the bundled model's guidance and 64x64.
    assert scene.json()["params"]["guidance_scale"] == 2.0
    assert small.json()["params"]["guidance_scale"] == 4.5

    # Each worker ran only its own model's job.
    tiny_done = f'sd3serve_jobs_finished_total{{model="{TINY}",status="succeeded"}}'
    scene_done = f'sd3serve_jobs_finished_total{{model="{BUNDLED}",status="succeeded"}}'
    poll(lambda: scene_done in finished_jobs(bundled), "the bundled worker's job count")
    assert tiny_done not in finished_jobs(bundled)
    poll(lambda: tiny_done in finished_jobs(tiny), "the tiny worker's job count")
    assert scene_done not in finished_jobs(tiny)


def test_bounds_are_the_chosen_models(two_models: tuple[Deployment, Worker, Worker]) -> None:
    api = two_models[0].api
    too_big = submit(api, model=BUNDLED, prompt="x", width=512, height=64)
    assert too_big.status_code == 422
    assert too_big.json()["error"]["field"] == "width"
    assert "between 64 and 256" in too_big.json()["error"]["message"]
    assert submit(api, model=TINY, prompt="x", width=512, height=64, steps=1).status_code == 202


def test_with_several_models_a_request_names_one_or_gets_the_default(
    two_models: tuple[Deployment, Worker, Worker], tmp_path: Path
) -> None:
    shared = two_models[0]
    unnamed = submit(shared.api, prompt="which model?")
    assert unnamed.status_code == 422
    error = unnamed.json()["error"]
    assert error["field"] == "model"
    assert BUNDLED in error["message"] and TINY in error["message"]

    stack = Stack()
    try:
        api = start_api(stack, shared.env | settings_env(default_model=BUNDLED))
        with closing(api.client):
            job = submit(api, prompt="the default", steps=1).json()
            assert job["model"] == BUNDLED
    finally:
        stack.stop()


def test_the_model_record_returns_after_a_redis_restart(model_dir: Path, tmp_path: Path) -> None:
    stack = Stack()
    try:
        redis_url = start_redis(stack, tmp_path)
        port = Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]
        env = base_env(redis_url, tmp_path / "results", model_dir) | settings_env(heartbeat_s=1)
        api = start_api(stack, env)
        with closing(api.client):
            start_worker(stack, env, "survives-redis")
            poll(lambda: worker_count(api) == 1, "a warm worker")

            # A restart without persistence loses everything, the model record included.
            _, redis = stack.children[0]
            redis.terminate()
            assert redis.wait(timeout=30) == 0
            stack.children.pop(0)
            down = submit(api, prompt="while Redis is down")
            assert down.status_code == 503
            start_redis(stack, tmp_path, port)
            stack.children.insert(0, stack.children.pop())  # stopped last, as before

            def model_known() -> bool:
                reply = api.client.get("/v1/models")
                return reply.status_code == 200 and [m["id"] for m in reply.json()["data"]] == [
                    TINY
                ]

            # Within a heartbeat or so, without restarting the worker.
            poll(model_known, "the worker to publish its model again", 30)
            done = submit(api, prefer="wait=60", prompt="after the restart", steps=1)
            assert done.status_code == 200 and done.json()["status"] == "succeeded"
    finally:
        stack.stop()
