"""OpenAI's Images API, driven by the official `openai` SDK against the live stack."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types import ImagesResponse
from PIL import Image
from redis import Redis

from common import keys
from common.contract import JobStatus, Timings
from common.jobstore import JobRecord
from service.dev import model_record, publish_idle_model
from service.openai_compat import JOB_ID_HEADER, quality_steps, unfinished_error
from tests.harness import TINY_MODEL, Api, Deployment, deployment, poll
from tests.helpers import job_params

PROMPT = "a small red circle in the center on a white background"
# The tiny model's default steps (tests/harness.py's model record says the same).
TINY_DEFAULT_STEPS = 8


def sync_client(api: Api) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)


def async_client(api: Api) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)


def generate(api: Api, mode: str, **kwargs: Any) -> tuple[ImagesResponse, str]:
    """images.generate() through the sync or the async client: the answer and its job id."""
    if mode == "sync":
        raw = sync_client(api).images.with_raw_response.generate(**kwargs)
        return raw.parse(), raw.headers[JOB_ID_HEADER]

    async def run() -> tuple[ImagesResponse, str]:
        async with async_client(api) as client:
            raw = await client.images.with_raw_response.generate(**kwargs)
            return raw.parse(), raw.headers[JOB_ID_HEADER]

    return asyncio.run(run())


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def job(api: Api, job_id: str) -> dict[str, Any]:
    response = api.client.get(f"/v1/jobs/{job_id}")
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.stack
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_b64_json_is_the_default_and_extra_body_reaches_the_job(api: Api, mode: str) -> None:
    result, job_id = generate(
        api, mode, prompt=PROMPT, size="64x64", extra_body={"seed": 7, "steps": 2}
    )
    assert result.model_extra == {"job_id": job_id}
    [item] = result.data or []
    assert item.url is None and item.b64_json
    image = decode(base64.b64decode(item.b64_json))
    assert image.format == "PNG" and image.size == (64, 64) and image.mode == "RGB"
    assert np.asarray(image).std() > 0
    assert (result.output_format, result.size, result.background) == ("png", "64x64", "opaque")
    assert result.quality is None  # `steps` was given: no quality tier ran
    assert abs(result.created - job(api, job_id)["finished_at"]) < 1

    done = job(api, job_id)  # the same job /v1/jobs shows, with the fields given in extra_body
    assert done["status"] == "succeeded" and done["model"] == TINY_MODEL
    assert done["params"]["seed"] == 7 and done["params"]["steps"] == 2


@pytest.mark.stack
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_url_format_links_the_jobs_images(api: Api, mode: str) -> None:
    result, job_id = generate(
        api,
        mode,
        prompt=PROMPT,
        model=TINY_MODEL,
        n=2,
        size="64x96",
        response_format="url",
        output_format="webp",
        extra_body={"steps": 1, "seed": 3},
    )
    urls = [item.url for item in result.data or []]
    assert len(urls) == 2 and all(item.b64_json is None for item in result.data or [])
    assert urls == job(api, job_id)["links"]["images"]
    assert (result.output_format, result.size) == ("webp", "64x96")
    pixels = []
    for url in urls:
        assert url and url.startswith(api.url)  # absolute
        response = httpx.get(url)
        response.raise_for_status()
        assert response.headers["content-type"] == "image/webp"
        image = decode(response.content)
        assert image.format == "WEBP" and image.size == (64, 96)
        pixels.append(np.asarray(image))
    assert not np.array_equal(pixels[0], pixels[1])  # image k has seed + k


@pytest.mark.stack
def test_typical_sdk_arguments_are_all_accepted(api: Api) -> None:
    """What clients written for DALL·E 3 and GPT Image send; the ignored ones are documented."""
    result, job_id = generate(
        api,
        "sync",
        prompt=PROMPT,
        model=TINY_MODEL,
        n=1,
        size="auto",
        quality="standard",
        response_format="b64_json",
        output_format="jpeg",
        output_compression=80,
        background="auto",
        moderation="auto",
        style="vivid",
        user="user-1234",
        safety_identifier="hash-of-user",
        extra_body={"steps": 1, "negative_prompt": "blurry", "guidance_scale": 1.0},
    )
    [item] = result.data or []
    assert item.b64_json
    image = decode(base64.b64decode(item.b64_json))
    assert image.format == "JPEG" and image.size == (64, 64)  # auto: the model's default size
    params = job(api, job_id)["params"]
    assert params["negative_prompt"] == "blurry" and params["guidance_scale"] == 1.0


@pytest.mark.stack
@pytest.mark.parametrize(
    ("quality", "steps", "reported"), [("low", 2, "low"), ("medium", 4, "medium")]
)
def test_quality_sets_the_steps(api: Api, quality: Any, steps: int, reported: str) -> None:
    assert quality_steps(quality, TINY_DEFAULT_STEPS) == steps
    result, job_id = generate(api, "sync", prompt=PROMPT, quality=quality, size="64x64")
    assert result.quality == reported
    assert job(api, job_id)["params"]["steps"] == steps


def test_quality_table() -> None:
    assert [quality_steps(q, 28) for q in ("low", "medium", "high", "auto")] == [7, 14, 28, 28]
    assert [quality_steps(q, 28) for q in ("standard", "hd", None)] == [28, 28, 28]
    assert [quality_steps(q, 1) for q in ("low", "medium", "high")] == [1, 1, 1]


@pytest.mark.stack
def test_models_parse_as_openai_models(api: Api) -> None:
    client = sync_client(api)
    listed = client.models.list()
    assert [m.id for m in listed.data] == [TINY_MODEL]
    [card] = listed.data
    assert card.object == "model" and card.owned_by == "sd3-serve" and card.created > 0
    one = client.models.retrieve(TINY_MODEL)
    assert (one.id, one.object, one.owned_by) == (TINY_MODEL, "model", "sd3-serve")
    assert one.model_extra and one.model_extra["size_multiple"] == 8
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.stack
@pytest.mark.parametrize(
    ("size", "says"),
    [
        ("100x100", "multiple of 8"),  # not a multiple of the model's size_multiple
        ("1024x1024", "between 64 and 512"),  # beyond the model's max_size
        ("4x4", "greater than or equal to 8"),  # below the schema's hard floor
        ("huge", "WIDTHxHEIGHT"),
    ],
)
def test_a_bad_size_is_a_bad_request_naming_size(api: Api, size: str, says: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sync_client(api).images.generate(prompt=PROMPT, size=size)
    exc = caught.value
    assert exc.status_code == 400 and exc.param == "size" and exc.code == "invalid_value"
    assert exc.type == "invalid_request_error"
    assert isinstance(exc.body, dict) and says in exc.body["message"]
    assert set(exc.body) == {"message", "type", "param", "code"}  # no job was created


@pytest.mark.stack
def test_an_unknown_model_is_a_bad_request_naming_model(api: Api) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sync_client(api).images.generate(prompt=PROMPT, model="dall-e-3")
    assert caught.value.param == "model" and caught.value.code == "invalid_value"
    assert TINY_MODEL in caught.value.message  # names the known models


@pytest.mark.stack
@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"prompt": PROMPT, "colour": "red"}, "colour", "unknown_parameter"),
        ({"prompt": PROMPT, "partial_images": 2}, "partial_images", "unknown_parameter"),
        ({}, "prompt", "missing_required_parameter"),
        ({"prompt": "  "}, "prompt", "invalid_value"),
        ({"prompt": PROMPT, "n": 5}, "n", "invalid_value"),
        ({"prompt": PROMPT, "quality": "max"}, "quality", "invalid_value"),
        ({"prompt": PROMPT, "output_format": "gif"}, "output_format", "invalid_value"),
        ({"prompt": PROMPT, "background": "transparent"}, "background", "invalid_value"),
        ({"prompt": PROMPT, "stream": True}, "stream", "invalid_value"),
        ({"prompt": PROMPT, "steps": 0}, "steps", "invalid_value"),
        ({"prompt": PROMPT, "seed": -1}, "seed", "invalid_value"),
    ],
)
def test_invalid_bodies_answer_in_openais_error_shape(
    api: Api, body: dict[str, Any], param: str, code: str
) -> None:
    response = api.client.post("/v1/images/generations", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


@pytest.mark.stack
@pytest.mark.parametrize(
    ("header", "value"), [("Idempotency-Key", "a b"), ("Prefer", "wait=301"), ("Prefer", "wait=x")]
)
def test_invalid_headers_answer_in_openais_error_shape(api: Api, header: str, value: str) -> None:
    response = api.client.post(
        "/v1/images/generations", json={"prompt": PROMPT}, headers={header: value}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", header.lower())
    assert header in error["message"]


@pytest.mark.stack
def test_openai_shape_is_scoped_to_its_route(api: Api) -> None:
    not_json = api.client.post(
        "/v1/images/generations", content=b"{", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 400
    assert not_json.json()["error"]["param"] is None
    assert not_json.json()["error"]["code"] == "invalid_json"
    ours = api.client.post("/v1/generate", json={"prompt": PROMPT, "colour": "red"})
    assert ours.status_code == 422 and ours.json()["error"]["field"] == "colour"
    spec = api.client.get("/openapi.json").json()["paths"]["/v1/images/generations"]["post"]
    assert "422" not in spec["responses"]


@pytest.fixture
def idle(tmp_path: Path, model_dir: Path) -> Iterator[Deployment]:
    """Redis and an API with no worker: jobs queue and wait."""
    with deployment(tmp_path, model_dir) as idle:
        yield idle


@pytest.mark.stack
def test_unfinished_jobs_answer_with_their_id(idle: Deployment) -> None:
    client = sync_client(idle.api)
    with pytest.raises(openai.InternalServerError) as not_ready:
        client.images.generate(prompt=PROMPT)
    assert not_ready.value.status_code == 503 and not_ready.value.code == "not_ready"
    assert not_ready.value.response.headers["retry-after"]

    # A model whose workers have scaled to zero: the job is queued and stays so.
    model = publish_idle_model(idle.redis_url, "ghost")
    with pytest.raises(openai.InternalServerError) as late:
        client.images.generate(prompt=PROMPT, model=model, extra_headers={"Prefer": "wait=1"})
    exc = late.value
    assert exc.status_code == 504 and exc.code == "timeout" and exc.type == "server_error"
    job_id = exc.response.headers[JOB_ID_HEADER]
    assert isinstance(exc.body, dict) and exc.body["job_id"] == job_id and job_id in exc.message
    assert exc.response.headers["x-should-retry"] == "false"  # a retry would duplicate the job
    assert exc.response.headers["location"].endswith(f"/v1/jobs/{job_id}")
    assert job(idle.api, job_id)["status"] == "queued"  # not lost

    # Canceled while the request waits: 409 naming it.
    outcome: dict[str, BaseException] = {}

    def wait_for_it() -> None:
        try:
            client.images.generate(prompt=PROMPT, model=model, extra_headers={"Prefer": "wait=60"})
        except BaseException as exc:
            outcome["error"] = exc

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    with Redis.from_url(idle.redis_url, decode_responses=True) as redis:
        queue = f"rq:queue:{keys.queue_name(model)}"
        poll(lambda: redis.llen(queue) == 2, "the second job queued")
        second = redis.lindex(queue, 1)
    assert isinstance(second, str)
    assert idle.api.client.delete(f"/v1/jobs/{second}").status_code == 200
    waiter.join(timeout=30)
    canceled = outcome["error"]
    assert isinstance(canceled, openai.ConflictError), canceled
    assert canceled.code == "job_canceled" and second in canceled.message
    assert canceled.response.headers[JOB_ID_HEADER] == second


def test_a_failed_job_is_a_server_error_with_its_reason() -> None:
    params = job_params("m", prompt=PROMPT)
    record = JobRecord(
        id="a" * 32,
        status=JobStatus.failed,
        params=params,
        created_at=1.0,
        finished_at=2.0,
        timings=Timings(),
        error="CUDA out of memory",
    )
    error = unfinished_error(record, "http://api/v1/jobs/" + record.id, 300)
    assert error is not None
    assert (error.status, error.type, error.code) == (500, "server_error", "generation_failed")
    assert "CUDA out of memory" in error.message and error.job_id == record.id
    assert error.headers["x-should-retry"] == "false"
    succeeded = record.model_copy(update={"status": JobStatus.succeeded, "error": None})
    assert unfinished_error(succeeded, "", 300) is None


@pytest.mark.stack
def test_a_quality_is_resolved_on_the_model_record_redis_holds(idle: Deployment) -> None:
    """A quality tier is a fraction of the model's default steps: after a redeploy changed
    them, the API's cached record is stale, and the job must take the new record's steps."""
    client = sync_client(idle.api)
    model = publish_idle_model(idle.redis_url, "tiers")

    def low_steps() -> int:
        with pytest.raises(openai.InternalServerError) as queued:  # no worker: 504, queued
            client.images.generate(
                prompt=PROMPT, model=model, quality="low", extra_headers={"Prefer": "wait=0"}
            )
        steps: int = job(idle.api, queued.value.response.headers[JOB_ID_HEADER])["params"]["steps"]
        return steps

    default = model_record(model).default_steps
    assert low_steps() == quality_steps("low", default)  # the API has the record cached now
    with Redis.from_url(idle.redis_url) as redis:
        redeployed = model_record(model).model_copy(update={"default_steps": default * 4})
        redis.hset(keys.MODELS, model, redeployed.model_dump_json())
    assert low_steps() == quality_steps("low", default * 4)
