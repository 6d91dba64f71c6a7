"""Results in an S3-compatible store (moto's server standing in for AWS, MinIO or R2), end to
end over real HTTP: the worker writes, the API streams or presigns, the purge deletes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from PIL import Image

from common.contract import OutputFormat
from common.results import open_result_store
from service.dev import Stack
from tests.harness import (
    Api,
    base_env,
    poll,
    settings_env,
    start_api,
    start_redis,
    start_worker,
    worker_count,
)
from tests.helpers import fetch_image, submit
from tests.moto_server import MotoServer, start_moto

pytestmark = pytest.mark.stack

BUCKET = "sd3serve-results"
STORE = f"s3://{BUCKET}/jobs"


@pytest.fixture(scope="module")
def s3_stack(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[tuple[Api, Api, MotoServer]]:
    """Redis, moto, a worker storing on S3, one API streaming and one handing out URLs."""
    stack = Stack()
    try:
        s3 = start_moto(stack)
        s3.create_bucket(BUCKET)
        redis_url = start_redis(stack, tmp_path_factory.mktemp("s3"))
        work = tmp_path_factory.mktemp("s3-results")
        env = base_env(redis_url, work, model_dir) | s3.env() | settings_env(result_store=STORE)
        streaming = start_api(stack, env)
        presigning = start_api(stack, env | settings_env(result_urls="presigned"))
        start_worker(stack, env, "s3-worker")
        poll(lambda: worker_count(streaming) == 1, "a warm worker")
        with closing(streaming.client), closing(presigning.client):
            yield streaming, presigning, s3
    finally:
        stack.stop()


def test_the_api_streams_images_from_the_object_store(
    s3_stack: tuple[Api, Api, MotoServer],
) -> None:
    api, _, s3 = s3_stack
    job = submit(api, prefer="wait=60", prompt="a red circle", steps=2, num_images=2).json()
    assert job["status"] == "succeeded", job
    stored = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=f"jobs/{job['id']}/")
    assert sorted(o["Key"] for o in stored["Contents"]) == [
        f"jobs/{job['id']}/0.png",
        f"jobs/{job['id']}/1.png",
    ]
    for url in job["links"]["images"]:
        assert url.startswith(api.url)  # streamed by the API, not a link into the bucket
        image, reply = fetch_image(api, url)
        assert reply.headers["content-type"] == "image/png"
        assert image.size == (64, 64)


def test_presigned_links_download_with_plain_http_until_the_purge(
    s3_stack: tuple[Api, Api, MotoServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, api, s3 = s3_stack
    job = submit(api, prefer="wait=60", prompt="a blue square", steps=2, output_format="webp")
    body = job.json()
    assert body["status"] == "succeeded", body
    [url] = body["links"]["images"]
    assert url.startswith(s3.endpoint_url) and "X-Amz-Signature=" in url
    expires = int(httpx.URL(url).params["X-Amz-Expires"])
    assert 86400 - 60 <= expires <= 86400  # expires with the job (SD3SERVE_RESULT_TTL_S)
    reply = httpx.get(url)
    assert reply.status_code == 200
    with Image.open(io.BytesIO(reply.content)) as image:
        assert image.format == "WEBP"

    # Once a job's images are older than the TTL, the workers' purge deletes them; here the
    # same purge runs with a negative age, as if the TTL had passed for every image.
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    store = open_result_store(STORE)
    assert store.get(body["id"], 0, OutputFormat.webp) is not None
    assert store.purge_older_than(-1) >= 1
    assert store.get(body["id"], 0, OutputFormat.webp) is None
    assert httpx.get(url).status_code == 404
    expired = api.client.get(f"/v1/jobs/{body['id']}/images/0")
    assert expired.status_code == 404
    assert expired.json()["error"]["code"] == "image_not_found"


def test_a_failed_write_fails_the_job_and_the_worker_carries_on(
    s3_stack: tuple[Api, Api, MotoServer],
) -> None:
    api, _, s3 = s3_stack
    for item in s3.client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.client.delete_object(Bucket=BUCKET, Key=item["Key"])
    s3.client.delete_bucket(Bucket=BUCKET)
    try:
        failed = submit(api, prefer="wait=60", prompt="nowhere to go", steps=1).json()
        assert failed["status"] == "failed"
        assert "NoSuchBucket" in failed["error"] and BUCKET in failed["error"]
        assert failed["links"]["images"] == []
    finally:
        s3.create_bucket(BUCKET)
    again = submit(api, prefer="wait=60", prompt="the bucket is back", steps=1).json()
    assert again["status"] == "succeeded"
