"""Hostile or unlucky input and a Redis that goes away: a 4xx or a 503, never a 500 or a hang.

Every request here goes over loopback HTTP to the real API; the Redis outage stops and restarts
a real redis-server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from redis import Redis

from common import keys
from service.dev import REDIS_DURABILITY, Stack, publish_idle_model
from service.settings import ApiSettings
from tests.harness import (
    TEST_MAX_PIXELS,
    TINY_MODEL,
    Api,
    deployment,
    poll,
    start_redis,
)
from tests.helpers import submit

pytestmark = pytest.mark.stack

MAX_BODY_BYTES = ApiSettings.model_fields["max_body_bytes"].default
UNKNOWN_JOB = "0123456789abcdef0123456789abcdef"
CHUNK = b" " * 65536  # JSON whitespace: the body would be valid were it not so large


class HugeBody:
    """A chunked body of up to `total` bytes that counts what the client has sent of it."""

    # Far past the limit plus what the kernel's socket buffers take in on loopback.
    GIVE_UP = 64 * 2**20

    def __init__(self, total: int = 2**40) -> None:
        self.total = total
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.sent < self.total:
            if self.sent > self.GIVE_UP:
                raise AssertionError(f"the server is still reading after {self.sent} bytes")
            self.sent += len(CHUNK)
            yield CHUNK


def assert_too_large(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 413, response.text
    assert response.headers["connection"] == "close"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "body_too_large"
    assert f"larger than {MAX_BODY_BYTES} bytes" in error["message"]
    return error


def test_a_chunked_body_is_refused_at_the_limit(api: Api) -> None:
    body = HugeBody()
    response = api.client.post(
        "/v1/generate", content=body, headers={"content-type": "application/json"}
    )
    error = assert_too_large(response)
    assert set(error) == {"code", "message", "field", "details"}
    assert body.sent < HugeBody.GIVE_UP


def test_a_declared_length_is_refused_before_the_body_is_read(api: Api) -> None:
    body = HugeBody()
    headers = {"content-type": "application/json", "content-length": str(body.total)}
    assert_too_large(api.client.post("/v1/generate", content=body, headers=headers))
    assert body.sent < HugeBody.GIVE_UP
    # One byte over, sent whole.
    over = b" " * (MAX_BODY_BYTES + 1)
    json_type = {"content-type": "application/json"}
    assert_too_large(api.client.post("/v1/generate", content=over, headers=json_type))


def test_the_openai_route_refuses_in_its_own_shape(api: Api) -> None:
    body = HugeBody()
    response = api.client.post(
        "/v1/images/generations", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "body_too_large"
    assert body.sent < HugeBody.GIVE_UP


def test_bodies_within_the_limit_reach_the_route(api: Api) -> None:
    """At the limit exactly, and chunked: the route parses them (an unknown model, 422)."""
    body = b'{"prompt": "x", "model": "no-such-model"}'
    padded = body.ljust(MAX_BODY_BYTES)
    chunked = (body[i : i + 7] for i in range(0, len(body), 7))
    for content in (padded, chunked):
        response = api.client.post(
            "/v1/generate", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "model"


# Header values no client should send. Bytes reach the server as they are: latin-1 superscripts
# (which str.isdigit() passes), UTF-8 digits of other scripts, and values far too long.
ODD_VALUES = [
    b"",
    b"garbage",
    b"wait=\xb9",
    b"wait=\xb2",
    b"wait=\xb3",
    "wait=¹".encode(),
    "wait=٠".encode(),
    b"wait=" + b"9" * 5000,
    b"wait=-1",
    b"wait=1e3",
    b"wait=0x10",
    b"wait=",
    b"wait",
    b"wait==1",
    b'wait="',
    b"wait=1, wait=99",
    b",;,;=",
    b"\xff\xfe\xfd",
    b"x" * 8000,
    b"*/*;q=abc",
    b"text/event-stream",
    b"application/json; charset=\xff",
    b"application/json; charset=utf-99",
    b"multipart/form-data; boundary=",
    b"application/x-www-form-urlencoded",
    b"Bearer \xff\xff",
    b"Basic !!!",
    b"1767225600000-0",
    b"99999999999999999999999-99",
]
# Each route that reads a header, with a request it answers without queueing a job.
ROUTES = [
    ("POST", "/v1/generate", {"prompt": "x", "model": "no-such-model"}),
    ("POST", "/v1/images/generations", {"prompt": "x", "model": "no-such-model"}),
    ("GET", f"/v1/jobs/{UNKNOWN_JOB}", None),
    ("GET", f"/v1/jobs/{UNKNOWN_JOB}/events", None),
    ("GET", f"/v1/jobs/{UNKNOWN_JOB}/images/0", None),
    ("GET", "/v1/models", None),
    ("GET", "/readyz", None),
]


@pytest.mark.parametrize(
    "header", ["Prefer", "Accept", "Content-Type", "Authorization", "Last-Event-ID"]
)
def test_odd_header_values_are_never_a_server_error(api: Api, header: str) -> None:
    failures = []
    for method, path, body in ROUTES:
        content = None if body is None else json.dumps(body).encode()
        for value in ODD_VALUES:
            headers = [(header.encode(), value)]
            if content is not None and header != "Content-Type":
                headers.append((b"content-type", b"application/json"))
            response = api.client.request(method, path, content=content, headers=headers)
            if response.status_code >= 500:
                failures.append((method, path, value[:40], response.status_code, response.text))
    assert not failures


def test_the_pixel_budget_is_published_and_enforced(api: Api) -> None:
    card = api.client.get(f"/v1/models/{TINY_MODEL}").json()
    assert card["max_pixels"] == TEST_MAX_PIXELS
    over = submit(api, prompt="x", width=512, height=512, num_images=2, steps=1)
    assert over.status_code == 422, over.text
    error = over.json()["error"]
    assert error["field"] == "num_images"
    assert f"at most {TEST_MAX_PIXELS:,} pixels per job" in error["message"]
    openai = api.client.post(
        "/v1/images/generations", json={"prompt": "x", "size": "512x512", "n": 2}
    )
    assert openai.status_code == 400, openai.text
    assert openai.json()["error"]["param"] == "n"


def test_the_dev_redis_is_durable(tmp_path: Path) -> None:
    """`sd3-serve dev` and the tests start Redis the same way, as production should run it."""
    stack = Stack()
    try:
        url = start_redis(stack, tmp_path)
        with Redis.from_url(url, decode_responses=True) as redis:
            names = [flag.removeprefix("--") for flag in REDIS_DURABILITY[::2]]
            config = {name: redis.config_get(name)[name] for name in names}
            data_dir = redis.config_get("dir")["dir"]
    finally:
        stack.stop()
    assert config == {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "maxmemory-policy": "noeviction",
    }
    assert Path(data_dir) == tmp_path / "redis"
    assert any((tmp_path / "redis").iterdir()), "no append-only file was written"


def assert_redis_down(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1


def test_a_full_redis_refuses_jobs_rather_than_evicting(model_dir: Path, tmp_path: Path) -> None:
    with deployment(tmp_path, model_dir) as bare:
        idle = publish_idle_model(bare.redis_url, "idle")
        with Redis.from_url(bare.redis_url) as redis:
            redis.config_set("maxmemory", 1)  # full from now on
            try:
                full = submit(bare.api, model=idle, prompt="no room", steps=1)
                assert_redis_down(full)
                assert "full" in full.json()["error"]["message"]
                assert redis.hlen(keys.MODELS) == 1, "a model record was evicted"
            finally:
                redis.config_set("maxmemory", 0)
        assert submit(bare.api, model=idle, prompt="room again", steps=1).status_code == 202


def test_the_api_rides_out_a_redis_outage(model_dir: Path, tmp_path: Path) -> None:
    with deployment(tmp_path, model_dir) as bare:
        api = bare.api
        idle = publish_idle_model(bare.redis_url, "idle")
        accepted = submit(api, model=idle, prompt="before the outage", steps=1)
        assert accepted.status_code == 202, accepted.text
        job_url = f"/v1/jobs/{accepted.json()['id']}"

        (redis,) = [proc for name, proc in bare.stack.children if name == "redis"]
        redis.terminate()
        redis.wait(timeout=30)

        down = submit(api, model=idle, prompt="during the outage", steps=1)
        assert_redis_down(down)
        assert down.json()["error"]["code"] == "not_ready"
        assert_redis_down(api.client.get(job_url))
        assert_redis_down(
            api.client.post("/v1/images/generations", json={"prompt": "x", "model": idle})
        )
        ready = api.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False

        # The same port and data directory: the API's clients find it again by themselves.
        revived = Stack()
        try:
            start_redis(revived, tmp_path, urlsplit(bare.redis_url).port)
            poll(
                lambda: submit(api, model=idle, prompt="after", steps=1).status_code == 202,
                "the API to accept jobs again",
                timeout_s=30,
            )
            assert api.client.get("/readyz").json()["ready"] is True
            # The append-only file kept the job accepted before the outage.
            job = api.client.get(job_url)
            assert job.status_code == 200, job.text
            assert job.json()["status"] == "queued"
        finally:
            revived.stop()
