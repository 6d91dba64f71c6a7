"""The Python SDK (clients/python) against the real stack, and what installing it brings in."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image
from sd3serve_client import (
    IDEMPOTENCY_KEY,
    APIConnectionError,
    ApiError,
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    Event,
    JobStatus,
    NotFound,
    RateLimited,
    ServerError,
    StatusEvent,
    Unavailable,
    ValidationError,
)
from sd3serve_client._retry import parse_retry_after
from sd3serve_client.errors import from_response

from service.dev import free_port, publish_idle_model
from tests.harness import (
    TINY_MODEL,
    Deployment,
    deployment,
    settings_env,
)

SERVER_SIDE = {"torch", "diffusers", "redis", "rq", "sd3-serve"}


def _closure(name: str) -> set[str]:
    """The distributions `pip install NAME` brings in: `requires` followed, extras left out."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        dist = canonicalize_name(todo.pop())
        if dist in seen:
            continue
        seen.add(dist)
        for line in metadata.requires(dist) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


def test_installing_the_sdk_brings_in_nothing_of_the_service() -> None:
    closure = _closure("sd3serve-client")
    assert {"httpx", "httpx-sse", "attrs"} <= closure
    assert closure & SERVER_SIDE == set()


def test_importing_the_sdk_loads_nothing_of_the_service(tmp_path: Path) -> None:
    code = (
        "import sys, sd3serve_client\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(loaded & {'torch', 'diffusers', 'redis', 'rq', 'fastapi', 'service',"
        " 'worker', 'common'}))"
    )
    # Outside the repository, so its packages are not even importable by accident.
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("10", now) == 10
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_error_responses_become_typed_errors() -> None:
    envelope = {
        "error": {
            "code": "invalid_parameter",
            "message": "width: too large",
            "field": "width",
            "details": [{"field": "width", "message": "too large"}],
        }
    }
    error = from_response(httpx.Response(422, json=envelope))
    assert isinstance(error, ValidationError) and isinstance(error, BadRequest)
    assert (error.status_code, error.code, error.field) == (422, "invalid_parameter", "width")
    assert [(d.field, d.message) for d in error.details] == [("width", "too large")]
    assert str(error) == "422 invalid_parameter: width: too large"

    busy = from_response(httpx.Response(503, text="<html>proxy</html>"), retry_after=5)
    assert isinstance(busy, Unavailable) and isinstance(busy, ServerError)
    assert (busy.code, busy.message, busy.retry_after) == ("http_503", "<html>proxy</html>", 5)
    assert type(from_response(httpx.Response(418))) is ApiError


def test_lost_connections_are_retried_then_reported() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    sent: list[httpx.Request] = []
    hooks = {"event_hooks": {"request": [sent.append]}}
    refused = pytest.raises(APIConnectionError, match=re.escape(f"cannot reach the API at {url}"))
    with Client(url, max_retries=2, httpx_args=hooks) as client, refused:
        client.get("a-job")
    assert len(sent) == 3


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1", "http://", "http://h:port"])
def test_a_bad_base_url_is_refused_before_any_request(url: str) -> None:
    with pytest.raises(ValueError, match="http://HOST:PORT"):
        Client(url)


@pytest.mark.stack
def test_generate_waits_for_the_job_and_downloads_its_image(live: Deployment) -> None:
    sent: list[httpx.Request] = []
    hooks = {"event_hooks": {"request": [sent.append]}}
    with Client(live.api.url, api_key="k-123", httpx_args=hooks) as client:
        job = client.generate(
            "a red circle", model=TINY_MODEL, width=128, height=64, steps=3, seed=5
        )
        png = client.download(job)
        with pytest.raises(Conflict) as finished:
            client.cancel(job)
        assert finished.value.code == "job_finished"
        assert TINY_MODEL in {model.id for model in client.models()}
        assert client.model(TINY_MODEL).id == TINY_MODEL

    assert job.status == JobStatus.SUCCEEDED
    assert (job.params.seed, job.params.steps) == (5, 3)
    with Image.open(io.BytesIO(png)) as image:
        assert (image.format, image.size) == ("PNG", (128, 64))
    assert {request.headers["Authorization"] for request in sent} == {"Bearer k-123"}
    [post] = [request for request in sent if request.method == "POST"]
    uuid.UUID(post.headers[IDEMPOTENCY_KEY])


@pytest.mark.stack
def test_async_client_generates_downloads_and_follows_events(live: Deployment) -> None:
    async def run() -> tuple[bytes, list[Event]]:
        async with AsyncClient(live.api.url) as client:
            job = await client.generate(
                "a blue square",
                model=TINY_MODEL,
                width=64,
                height=128,
                steps=2,
                num_images=2,
                output_format="jpeg",
            )
            assert job.status == JobStatus.SUCCEEDED
            return await client.download(job, 1), [event async for event in client.events(job)]

    jpeg, events = asyncio.run(run())
    with Image.open(io.BytesIO(jpeg)) as image:
        assert (image.format, image.size) == ("JPEG", (64, 128))
    assert events[-1] == StatusEvent(JobStatus.SUCCEEDED, id=events[-1].id)


@pytest.mark.stack
def test_events_come_in_order_and_end_with_the_final_state(live: Deployment) -> None:
    with Client(live.api.url) as client:
        job = client.generate("a green triangle", model=TINY_MODEL, steps=4, wait=False)
        events = list(client.events(job.id))

    seen = [
        (event.status, None) if isinstance(event, StatusEvent) else (event.step, event.total)
        for event in events
    ]
    # Progress is coalesced: steps in order, not necessarily each one, the last one always.
    steps = [step for step, total in seen[2:-1]]
    assert seen[:2] == [(JobStatus.QUEUED, None), (JobStatus.RUNNING, None)]
    assert seen[-1] == (JobStatus.SUCCEEDED, None)
    assert steps == sorted(set(steps)) and steps[-1] == 4
    assert all(total == 4 for _, total in seen[2:-1])


@pytest.mark.stack
def test_a_bad_parameter_is_a_validation_error_naming_it(live: Deployment) -> None:
    sent: list[httpx.Request] = []
    hooks = {"event_hooks": {"request": [sent.append]}}
    with Client(live.api.url, httpx_args=hooks) as client, pytest.raises(ValidationError) as err:
        client.generate("x", model=TINY_MODEL, width=5000)
    assert (err.value.status_code, err.value.code, err.value.field) == (
        422,
        "invalid_parameter",
        "width",
    )
    assert len(sent) == 1  # a 422 is not retried


@pytest.fixture(scope="module")
def parked(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Deployment]:
    """Redis and the API, one queued job per model at most, and models no worker runs."""
    extra = settings_env(max_queued_jobs=1)
    with deployment(tmp_path_factory.mktemp("parked"), model_dir, extra) as parked:
        yield parked


@pytest.mark.stack
def test_cancel_a_queued_job(parked: Deployment) -> None:
    model = publish_idle_model(parked.redis_url, "parked-cancel")
    with Client(parked.api.url) as client:
        job = client.generate("never runs", model=model, wait=False)
        assert job.status == JobStatus.QUEUED

        canceled = client.cancel(job)
        assert canceled.status == JobStatus.CANCELED
        assert client.get(job.id).status == JobStatus.CANCELED
        assert [event.status for event in client.events(job) if isinstance(event, StatusEvent)] == [
            JobStatus.QUEUED,
            JobStatus.CANCELED,
        ]
        with pytest.raises(NotFound) as missing:
            client.get("no-such-job")
        assert missing.value.code == "job_not_found"


@pytest.mark.stack
def test_a_full_queue_is_retried_after_retry_after(parked: Deployment) -> None:
    model = publish_idle_model(parked.redis_url, "parked-full")
    posts: list[tuple[float, str | None]] = []
    refusals: list[tuple[float, float]] = []

    with Client(parked.api.url) as other:
        first = other.generate("fills the queue", model=model, wait=False)
        with Client(parked.api.url, max_retries=0) as impatient, pytest.raises(RateLimited) as full:
            impatient.generate("refused", model=model, wait=False)
        assert full.value.code == "queue_full" and full.value.retry_after == 10

        def on_request(request: httpx.Request) -> None:
            if request.method == "POST":
                posts.append((time.monotonic(), request.headers.get(IDEMPOTENCY_KEY)))

        def on_response(response: httpx.Response) -> None:
            if response.status_code == 429:
                refusals.append((time.monotonic(), float(response.headers["Retry-After"])))
                other.cancel(first)  # room in the queue for the retry

        hooks = {"event_hooks": {"request": [on_request], "response": [on_response]}}
        with Client(parked.api.url, httpx_args=hooks) as client:
            job = client.generate("waits its turn", model=model, wait=False)

    assert job.status == JobStatus.QUEUED
    assert len(refusals) == 1 and len(posts) == 2
    (refused_at, retry_after), ((_, first_key), (retried_at, retry_key)) = refusals[0], posts
    assert retried_at - refused_at >= retry_after
    assert first_key is not None and first_key == retry_key
