"""The result stores: one behaviour for the local folder and for S3 (a real moto server)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import common.results
from common.contract import OutputFormat
from common.results import (
    MAX_PRESIGN_S,
    LocalResultStore,
    ResultStore,
    ResultStoreError,
    S3ResultStore,
    StoredImage,
    check_result_store_url,
    open_result_store,
)
from tests.moto_server import MotoServer, moto_server

needs_moto = pytest.mark.skipif(
    find_spec("moto") is None, reason="moto is not installed (pip install -e '.[dev]')"
)

JOB = "0123456789abcdef" * 2
OTHER_JOB = "fedcba9876543210" * 2


def _isolate_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Only what a test sets may reach boto3: not the developer's profiles, keys or endpoints.
    for name in list(os.environ):
        if name.startswith("AWS_") and name != "AWS_CA_BUNDLE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def offline_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keys to sign with and no server: presigning is local, so it needs none."""
    _isolate_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret")


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        yield server


@pytest.fixture
def s3(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    """The moto server, with this process's AWS variables pointing at it."""
    _isolate_aws(monkeypatch, tmp_path)
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    return moto


@pytest.fixture
def bucket(s3: MotoServer) -> str:
    name = f"results-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(name)
    return name


@pytest.fixture(params=["file", pytest.param("s3", marks=needs_moto)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ResultStore:
    if request.param == "file":
        return open_result_store(f"file://{tmp_path}/results")
    return open_result_store(f"s3://{request.getfixturevalue('bucket')}/runs/today")


def _keys(s3: MotoServer, bucket: str) -> set[str]:
    listing: dict[str, Any] = s3.client.list_objects_v2(Bucket=bucket)
    return {obj["Key"] for obj in listing.get("Contents", [])}


# Both backends


def test_round_trip_keeps_bytes_and_content_type(store: ResultStore) -> None:
    store.put(JOB, 0, b"png-bytes", OutputFormat.png)
    store.put(JOB, 1, b"jpeg-bytes", OutputFormat.jpeg)
    png, jpeg = store.get(JOB, 0, OutputFormat.png), store.get(JOB, 1, OutputFormat.jpeg)
    assert png is not None and (png.data, png.content_type) == (b"png-bytes", "image/png")
    assert jpeg is not None and (jpeg.data, jpeg.content_type) == (b"jpeg-bytes", "image/jpeg")
    store.put(JOB, 0, b"replaced", OutputFormat.png)
    assert store.get(JOB, 0, OutputFormat.png) == StoredImage(b"replaced", "image/png")


def test_get_of_a_missing_image_is_none(store: ResultStore) -> None:
    assert store.get(JOB, 0, OutputFormat.png) is None
    store.put(JOB, 0, b"png-bytes", OutputFormat.png)
    assert store.get(JOB, 1, OutputFormat.png) is None
    assert store.get(JOB, 0, OutputFormat.webp) is None
    assert store.get(OTHER_JOB, 0, OutputFormat.png) is None


@pytest.mark.parametrize("job_id", ["../etc", "0123", "0123456789ABCDEF" * 2, "x" * 32, ""])
def test_refuses_what_is_not_a_job_id(store: ResultStore, job_id: str) -> None:
    assert store.get(job_id, 0, OutputFormat.png) is None
    with pytest.raises(ValueError, match="not a job id"):
        store.put(job_id, 0, b"x", OutputFormat.png)


def test_purge_keeps_recent_images(store: ResultStore) -> None:
    store.put(JOB, 0, b"png-bytes", OutputFormat.png)
    assert store.purge_older_than(3600) == 0
    assert store.get(JOB, 0, OutputFormat.png) is not None


def test_purge_deletes_images_past_the_cutoff(store: ResultStore) -> None:
    store.put(JOB, 0, b"a", OutputFormat.png)
    store.put(JOB, 1, b"b", OutputFormat.png)
    store.put(OTHER_JOB, 0, b"c", OutputFormat.webp)
    # A negative age puts the cutoff in the future: everything written so far is older.
    assert store.purge_older_than(-60) == 3
    assert store.get(JOB, 0, OutputFormat.png) is None
    assert store.get(OTHER_JOB, 0, OutputFormat.webp) is None
    assert store.purge_older_than(-60) == 0
    store.put(JOB, 0, b"again", OutputFormat.png)  # a purged job's folder or prefix is reusable
    assert store.get(JOB, 0, OutputFormat.png) is not None


# Local folder


def test_local_purge_deletes_old_and_keeps_new(tmp_path: Path) -> None:
    store = LocalResultStore(tmp_path)
    store.put(JOB, 0, b"old", OutputFormat.png)
    store.put(JOB, 1, b"old", OutputFormat.jpeg)
    store.put(OTHER_JOB, 0, b"new", OutputFormat.png)
    (tmp_path / OTHER_JOB / ".tmp-crashed").write_bytes(b"half")
    (tmp_path / "not-a-job").mkdir()
    two_hours_ago = time.time() - 7200
    for path in [*(tmp_path / JOB).iterdir(), tmp_path / OTHER_JOB / ".tmp-crashed"]:
        os.utime(path, (two_hours_ago, two_hours_ago))

    assert store.purge_older_than(3600) == 2  # images; the stale temporary file is not one
    assert not (tmp_path / JOB).exists()
    assert sorted(p.name for p in (tmp_path / OTHER_JOB).iterdir()) == ["0.png"]
    assert store.get(OTHER_JOB, 0, OutputFormat.png) is not None
    assert (tmp_path / "not-a-job").is_dir()


def test_local_layout_and_no_leftover_temporary_files(tmp_path: Path) -> None:
    store = LocalResultStore(tmp_path)
    store.put(JOB, 3, b"webp-bytes", OutputFormat.webp)
    assert [p.name for p in (tmp_path / JOB).iterdir()] == ["3.webp"]
    assert (tmp_path / JOB / "3.webp").read_bytes() == b"webp-bytes"


def test_local_put_survives_a_purge_that_takes_its_new_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another worker's purge removes every empty job folder: one can go between the put
    # making its job's folder and creating its file there.
    store, purger = LocalResultStore(tmp_path), LocalResultStore(tmp_path)
    make_folder = Path.mkdir
    purges: list[int] = []

    def mkdir_then_purge(self: Path, *args: Any, **kwargs: Any) -> None:
        make_folder(self, *args, **kwargs)
        if self.name == JOB and len(purges) < 2:
            purges.append(purger.purge_older_than(3600))
            assert not self.exists()

    monkeypatch.setattr(Path, "mkdir", mkdir_then_purge)
    store.put(JOB, 0, b"png-bytes", OutputFormat.png)
    assert purges == [0, 0]
    assert store.get(JOB, 0, OutputFormat.png) == StoredImage(b"png-bytes", "image/png")


def test_local_store_cannot_presign(tmp_path: Path) -> None:
    store = open_result_store(f"file://{tmp_path}")
    assert not store.supports_presigned_urls
    with pytest.raises(ResultStoreError, match="cannot presign"):
        store.presigned_url(JOB, 0, OutputFormat.png, 60)


def test_purge_of_a_store_never_written_to(tmp_path: Path) -> None:
    assert LocalResultStore(tmp_path / "absent").purge_older_than(0) == 0


# S3


@needs_moto
def test_s3_object_layout(s3: MotoServer, bucket: str) -> None:
    open_result_store(f"s3://{bucket}").put(JOB, 0, b"x", OutputFormat.png)
    open_result_store(f"s3://{bucket}/a/b/").put(JOB, 2, b"y", OutputFormat.jpeg)
    assert _keys(s3, bucket) == {f"{JOB}/0.png", f"a/b/{JOB}/2.jpeg"}
    head = s3.client.head_object(Bucket=bucket, Key=f"a/b/{JOB}/2.jpeg")
    assert head["ContentType"] == "image/jpeg"


@needs_moto
def test_s3_purge_pages_batches_and_leaves_other_keys_alone(s3: MotoServer, bucket: str) -> None:
    store = S3ResultStore(bucket, "a/b")
    store.list_page_size = store.delete_batch_size = 2  # 5 images: three pages, three batches
    for index in range(3):
        store.put(JOB, index, b"x", OutputFormat.png)
    for index in range(2):
        store.put(OTHER_JOB, index, b"x", OutputFormat.jpeg)
    others = {"a/b/README", f"a/b/{JOB}/notes.txt", f"a/bc/{JOB}/0.png", f"{JOB}/0.png"}
    for key in others:
        s3.client.put_object(Bucket=bucket, Key=key, Body=b"not ours")

    assert store.purge_older_than(-60) == 5
    assert _keys(s3, bucket) == others


@needs_moto
def test_s3_presigned_url_downloads_with_plain_http(s3: MotoServer, bucket: str) -> None:
    store = open_result_store(f"s3://{bucket}/runs")
    assert store.supports_presigned_urls
    store.put(JOB, 0, b"png-bytes", OutputFormat.png)
    url = store.presigned_url(JOB, 0, OutputFormat.png, 60)
    # Path-style on a custom endpoint: MinIO and moto serve no bucket subdomains.
    assert url.startswith(f"{s3.endpoint_url}/{bucket}/runs/{JOB}/0.png?")
    response = httpx.get(url, trust_env=False)
    assert response.status_code == 200
    assert response.content == b"png-bytes"
    assert response.headers["content-type"] == "image/png"


@pytest.mark.usefixtures("offline_aws")
@pytest.mark.parametrize(("asked", "signed"), [(0, 1), (-5, 1), (10**9, MAX_PRESIGN_S)])
def test_s3_presign_expiry_is_clamped(asked: int, signed: int) -> None:
    url = open_result_store("s3://results").presigned_url(JOB, 0, OutputFormat.png, asked)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == [str(signed)]


@needs_moto
def test_s3_put_to_a_missing_bucket_names_the_problem(s3: MotoServer) -> None:
    store = open_result_store("s3://no-such-bucket-here/p")
    with pytest.raises(ResultStoreError, match="no-such-bucket-here") as raised:
        store.put(JOB, 0, b"x", OutputFormat.png)
    assert "NoSuchBucket" in str(raised.value)
    assert "does not exist" in str(raised.value)
    assert "testing" not in str(raised.value)  # the credentials
    # Reading from it is a misconfiguration to report, not an image that has expired.
    with pytest.raises(ResultStoreError, match="NoSuchBucket"):
        store.get(JOB, 0, OutputFormat.png)


def _signing(url: str) -> tuple[str, str]:
    """(host, region) of a presigned URL."""
    parts = urlsplit(url)
    credential = parse_qs(parts.query)["X-Amz-Credential"][0]
    return parts.netloc, credential.split("/")[2]


@pytest.mark.usefixtures("offline_aws")
def test_s3_client_follows_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    def presign() -> tuple[str, str]:
        return _signing(S3ResultStore("bkt").presigned_url(JOB, 0, OutputFormat.png, 60))

    # On AWS: virtual-hosted in the bucket's own region, never the legacy global host elsewhere.
    assert presign() == ("bkt.s3.amazonaws.com", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert presign() == ("bkt.s3.ap-south-1.amazonaws.com", "ap-south-1")
    monkeypatch.setenv("AWS_REGION", "af-south-1")
    assert presign() == ("bkt.s3.af-south-1.amazonaws.com", "af-south-1")
    # Elsewhere (MinIO, R2): the configured endpoint, path-style.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.example:9000")
    assert presign()[0] == "minio.example:9000"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://acct.r2.cloudflarestorage.com")
    url = S3ResultStore("bkt", "p").presigned_url(JOB, 0, OutputFormat.png, 60)
    assert url.startswith(f"https://acct.r2.cloudflarestorage.com/bkt/p/{JOB}/0.png?")


# URLs


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("file://./sd3serve-results", Path("sd3serve-results")),
        ("file://relative/dir", Path("relative/dir")),
        ("file:///srv/results", Path("/srv/results")),
    ],
)
def test_file_urls(url: str, root: Path) -> None:
    store = open_result_store(url)
    assert isinstance(store, LocalResultStore) and store.root == root
    assert check_result_store_url(url) == url


def test_a_relative_file_url_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    open_result_store("file://./sd3serve-results").put(JOB, 0, b"x", OutputFormat.png)
    assert (tmp_path / "sd3serve-results" / JOB / "0.png").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://results", "results", ""),
        ("s3://results/", "results", ""),
        ("s3://my.results-1/runs", "my.results-1", "runs"),
        ("s3://results/a/b/", "results", "a/b"),
    ],
)
def test_s3_urls(url: str, bucket: str, prefix: str) -> None:
    store = open_result_store(url)
    assert isinstance(store, S3ResultStore) and (store.bucket, store.prefix) == (bucket, prefix)
    assert check_result_store_url(url) == url


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("", "must be file://PATH or s3://BUCKET"),
        ("results", "must be file://PATH or s3://BUCKET"),
        ("/srv/results", "must be file://PATH or s3://BUCKET"),
        ("https://results.example/x", "must be file://PATH or s3://BUCKET"),
        ("redis://127.0.0.1:6379/0", "must be file://PATH or s3://BUCKET"),
        ("S3://results", "must be file://PATH or s3://BUCKET"),
        ("file://", "no path"),
        ("s3://", "no valid bucket"),
        ("s3:///prefix", "no valid bucket"),
        ("s3://Results_Bucket/x", "no valid bucket"),
        ("s3://AKIDEXAMPLE:hunter2secret@results/x", "no valid bucket"),
        ("s3://results/a//b", "malformed prefix"),
        ("s3://results/x?region=eu-west-1", "malformed prefix"),
    ],
)
def test_bad_urls_are_refused_without_echoing_them(
    url: str, complaint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ResultStoreError, match=complaint) as raised:
        open_result_store(url)
    with pytest.raises(ValueError, match=complaint) as refused:
        check_result_store_url(url)
    for message in (str(raised.value), str(refused.value)):
        assert "hunter2secret" not in message and "AKIDEXAMPLE" not in message


def test_checking_a_url_creates_no_client(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_client() -> None:
        raise AssertionError("a syntax check must not build an S3 client")

    monkeypatch.setattr(common.results, "_s3_client", no_client)
    assert check_result_store_url("s3://results/a/b") == "s3://results/a/b"
