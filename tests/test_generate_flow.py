"""End to end: HTTP API -> Redis/RQ -> warm worker running the real pipeline -> stored images."""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Queue

from common import jobstore, keys
from common.contract import GENERATE_TASK
from common.jobstore import Transitions
from service.dev import wait_until
from tests.harness import TINY_MODEL, Api, Deployment
from tests.helpers import events, fetch_image, job_params, submit, wait_final

pytestmark = pytest.mark.stack


def test_async_flow_queues_then_serves_a_decodable_png(api: Api) -> None:
    response = submit(api, prompt="a large blue square", width=64, height=96, steps=4, seed=7)
    assert response.status_code == 202
    job = response.json()
    assert job["status"] in ("queued", "running", "succeeded")
    assert response.headers["location"] == job["links"]["self"]
    assert job["model"] == TINY_MODEL
    assert job["params"] == {
        "model": TINY_MODEL,
        "prompt": "a large blue square",
        "negative_prompt": "",
        "width": 64,
        "height": 96,
        "steps": 4,
        "guidance_scale": 4.5,
        "seed": 7,
        "num_images": 1,
        "output_format": "png",
    }

    done = wait_final(api, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == {"step": 4, "total": 4}
    timings = done["timings"]
    assert all(timings[k] is not None and timings[k] >= 0 for k in timings)
    assert timings["total"] >= timings["queue_wait"]
    [url] = done["links"]["images"]
    image, reply = fetch_image(api, url)
    assert reply.headers["content-type"] == "image/png"
    assert image.format == "PNG" and image.size == (64, 96) and image.mode == "RGB"
    recipe = json.loads(image.info["parameters"])
    assert recipe["seed"] == 7 and recipe["prompt"] == "a large blue square"
    assert np.asarray(image).std() > 0  # a real picture, not a blank


def test_prefer_wait_returns_the_finished_job(api: Api) -> None:
    response = submit(api, prefer="wait=60", prompt="a red circle", width=128, height=128, steps=8)
    assert response.status_code == 200
    assert response.headers["preference-applied"] == "wait=60"
    job = response.json()
    assert job["status"] == "succeeded"
    assert isinstance(job["params"]["seed"], int)  # picked by the service and reported
    image, _ = fetch_image(api, job["links"]["images"][0])
    assert image.size == (128, 128)


def test_prefer_wait_times_out_with_202(api: Api) -> None:
    response = submit(api, prefer="wait=0", prompt="a red circle", steps=2)
    assert response.status_code == 202
    assert wait_final(api, response.json()["id"])["status"] == "succeeded"


def test_sse_reports_states_and_steps_in_order(api: Api) -> None:
    job = submit(api, prompt="a small green triangle", steps=6).json()
    stream = events(api, job["id"])
    statuses = [data["status"] for kind, data in stream if kind == "status"]
    steps = [data["step"] for kind, data in stream if kind == "progress"]
    assert statuses == ["queued", "running", "succeeded"]
    # Progress is coalesced off the denoising thread: steps in order, the last one always.
    assert steps == sorted(set(steps)) and steps[-1] == 6
    kinds = [kind for kind, _ in stream]
    assert kinds[:2] == ["status", "status"] and kinds[-1] == "status"
    # Replaying the stream after the end gives the same history.
    assert events(api, job["id"]) == stream


def test_image_k_reproduces_alone_from_seed_plus_k(api: Api) -> None:
    common: dict[str, Any] = {"prompt": "a yellow circle", "width": 64, "height": 64, "steps": 6}
    batch = wait_final(api, submit(api, seed=1234, num_images=3, **common).json()["id"])
    alone = wait_final(api, submit(api, seed=1236, num_images=1, **common).json()["id"])
    assert batch["status"] == alone["status"] == "succeeded"
    assert len(batch["links"]["images"]) == 3
    third, _ = fetch_image(api, batch["links"]["images"][2])
    single, _ = fetch_image(api, alone["links"]["images"][0])
    diff = np.abs(np.asarray(third, dtype=int) - np.asarray(single, dtype=int))
    assert diff.max() <= 1  # within 1/255 per pixel
    first, _ = fetch_image(api, batch["links"]["images"][0])
    assert np.abs(np.asarray(first, dtype=int) - np.asarray(single, dtype=int)).max() > 1
    assert json.loads(third.info["parameters"])["seed"] == 1236


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_other_output_formats(api: Api, fmt: str, pil_format: str) -> None:
    job = submit(api, prefer="wait=60", prompt="a purple square", steps=2, output_format=fmt)
    image, reply = fetch_image(api, job.json()["links"]["images"][0])
    assert reply.headers["content-type"] == f"image/{fmt}"
    assert image.format == pil_format and image.size == (64, 64)


def test_models_lists_the_served_model_in_openai_shape(api: Api) -> None:
    listing = api.client.get("/v1/models").json()
    assert listing["object"] == "list"
    [info] = listing["data"]
    assert (info["id"], info["object"], info["owned_by"]) == (TINY_MODEL, "model", "sd3-serve")
    assert isinstance(info["created"], int) and info["created"] > 0
    assert info["pipeline"] == "StableDiffusion3Pipeline"
    assert info["scheduler"] == "FlowMatchEulerDiscreteScheduler"
    assert info["scheduler_shift"] == 3.0
    assert info["size_multiple"] == 8  # VAE scale factor 4 x patch size 2, read from the model
    assert (info["default_width"], info["default_steps"]) == (64, 8)
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    assert len(info["text_encoders"]) == 3
    assert info["workers_ready"] == 1 and info["queue_depth"] >= 0
    one = api.client.get(f"/v1/models/{TINY_MODEL}").json()
    assert one | {"queue_depth": 0} == info | {"queue_depth": 0}
    missing = api.client.get("/v1/models/sd3.5-large")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_unknown_model_is_a_422_listing_the_known_ones(api: Api) -> None:
    reply = submit(api, model="sd3.5-large", prompt="x")
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["field"] == "model"
    assert TINY_MODEL in error["message"]


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_metrics_carry_resolution_and_steps_labels(live: Deployment) -> None:
    api = live.api
    assert (
        submit(api, prefer="wait=60", prompt="x", width=128, height=128, steps=8).status_code == 200
    )
    assert (
        submit(api, prefer="wait=60", prompt="x", width=72, height=64, steps=3).status_code == 200
    )
    model = ("model", TINY_MODEL)
    labels = frozenset({model, ("resolution", "128x128"), ("steps", "8")})
    # 72x64 and 3 steps are neither configured: both are counted as "other".
    other = frozenset({model, ("resolution", "other"), ("steps", "other")})

    def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return _samples(api.client.get(f"{live.worker_metrics_url}/metrics").text)

    # The worker records a job's metrics just after it marks the job finished, which is what
    # ends the synchronous request, so the second job's samples may land a moment later.
    def both_recorded() -> bool:
        samples = scrape()
        return all(("sd3serve_job_latency_seconds_count", k) in samples for k in (labels, other))

    wait_until(
        both_recorded,
        live.stack,
        "both jobs' latency samples",
        30,
    )
    worker = scrape()
    for name in (
        "sd3serve_job_latency_seconds",
        "sd3serve_queue_wait_seconds",
        "sd3serve_inference_seconds",
    ):
        assert worker[(f"{name}_count", labels)] >= 1
    assert worker[("sd3serve_job_latency_seconds_count", other)] >= 1
    step = frozenset({model, ("resolution", "128x128")})
    assert worker[("sd3serve_step_seconds_count", step)] >= 8
    done = frozenset({model, ("status", "succeeded")})
    assert worker[("sd3serve_jobs_finished_total", done)] >= 2
    assert worker[("sd3serve_model_load_seconds", frozenset())] > 0
    assert worker[("sd3serve_worker_ready", frozenset({model}))] == 1

    front = _samples(api.client.get("/metrics").text)
    assert (
        front[
            (
                "sd3serve_http_requests_total",
                frozenset({("route", "/v1/generate"), ("status", "200")}),
            )
        ]
        >= 2
    )
    assert front[("sd3serve_ready_workers", frozenset({model}))] == 1
    assert ("sd3serve_queue_depth", frozenset({model})) in front
    health = api.client.get(f"{live.worker_metrics_url}/healthz").json()
    assert health == {"status": "ok", "ready": True}


def test_a_job_queued_with_its_id_as_argument_still_runs(live: Deployment) -> None:
    """Jobs that API versions before service.rq_recording queued, with the job's id as the
    task's argument, are run by a newer worker: a rolling deploy upgrades workers first."""
    job_id = uuid.uuid4().hex
    params = job_params(TINY_MODEL, prompt="a green triangle", guidance_scale=4.5, seed=3)
    with Redis.from_url(live.redis_url) as redis:
        call = Transitions(3600).create(job_id, params)
        redis.register_script(jobstore.CREATE)(keys=call.keys, args=call.args)
        queue = Queue(keys.queue_name(TINY_MODEL), connection=redis)
        queue.enqueue_call(GENERATE_TASK, args=(job_id,), job_id=job_id, timeout=600)
        done = wait_final(live.api, job_id)
    assert done["status"] == "succeeded", done
    assert done["params"] == params.model_dump(mode="json")
    image, _ = fetch_image(live.api, done["links"]["images"][0])
    assert image.size == (64, 64)
