"""Where finished images live. Workers write them; the API reads them back.

Two backends behind one small interface: a local directory (`file://PATH`, shared by the API and
the workers on one machine or volume) and an S3-compatible bucket (`s3://BUCKET/PREFIX`: AWS,
MinIO, R2, ...). Both lay images out as `{prefix}/{job_id}/{index}.{format}`.

The API calls these methods from worker threads, so every store must be thread-safe. This module
is imported by the API process and must stay free of torch.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from common.contract import JOB_ID, OutputFormat

# SigV4 refuses to sign a URL valid for longer than seven days.
MAX_PRESIGN_S = 7 * 24 * 3600
# Tries to make a job's folder and a file in it, each of which a concurrent purge can undo by
# removing the folder while it is still empty: twice in a row takes two purges in a moment.
PUT_TRIES = 3

_FILE_SCHEME = "file://"
_S3_SCHEME = "s3://"
_ACCEPTED = "file://PATH or s3://BUCKET[/PREFIX]"
# The current S3 rules (MinIO and R2 enforce the same); a stricter check than S3 itself is
# worth it: it keeps anything like "key:secret@bucket" from ever reaching a client or a message.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# An image's name inside its job's folder; purges touch nothing else.
_IMAGE_FILE = re.compile(rf"^\d+\.(?:{'|'.join(f.value for f in OutputFormat)})$")


class ResultStoreError(Exception):
    """A refused store URL or a failed store operation. Messages never carry credentials."""


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    content_type: str


class ResultStore(Protocol):
    def put(self, job_id: str, index: int, data: bytes, fmt: OutputFormat) -> None: ...

    def get(self, job_id: str, index: int, fmt: OutputFormat) -> StoredImage | None: ...

    def presigned_url(
        self, job_id: str, index: int, fmt: OutputFormat, expires_in_s: int
    ) -> str: ...

    def purge_older_than(self, age_s: float) -> int: ...

    @property
    def supports_presigned_urls(self) -> bool: ...


def _image_name(job_id: str, index: int, fmt: OutputFormat) -> str:
    # Job ids reach here from URLs; refuse anything that could leave the root or the prefix.
    if not JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return f"{job_id}/{index}.{fmt.value}"


class LocalResultStore:
    """One folder per job under `root`, one file per image, named `<index>.<format>`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def supports_presigned_urls(self) -> bool:
        return False

    def put(self, job_id: str, index: int, data: bytes, fmt: OutputFormat) -> None:
        path = self.root / _image_name(job_id, index, fmt)
        # Write then rename, so a reader never sees half an image.
        fd, tmp = self._temporary_file(path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def _temporary_file(folder: Path) -> tuple[int, str]:
        """A new temporary file in the job's folder, made if need be. Another worker's purge
        removes every empty job folder, so one made here can go before the file is in it: then
        it is made again."""
        for _ in range(PUT_TRIES - 1):
            folder.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                return tempfile.mkstemp(dir=folder, prefix=".tmp-")
        folder.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=folder, prefix=".tmp-")

    def get(self, job_id: str, index: int, fmt: OutputFormat) -> StoredImage | None:
        if not JOB_ID.match(job_id):
            return None
        try:
            return StoredImage(
                (self.root / _image_name(job_id, index, fmt)).read_bytes(), fmt.content_type
            )
        except FileNotFoundError:
            return None

    def presigned_url(self, job_id: str, index: int, fmt: OutputFormat, expires_in_s: int) -> str:
        raise ResultStoreError(
            "a file:// result store cannot presign URLs; serve its images through the API"
        )

    def purge_older_than(self, age_s: float) -> int:
        """Delete every image file last written more than `age_s` ago; return how many images.

        A job's folder goes once it is empty. Leftover temporary files from a crashed write are
        deleted by the same rule but not counted.
        """
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - age_s
        purged = 0
        for job_dir in self.root.iterdir():
            if not (JOB_ID.match(job_dir.name) and job_dir.is_dir()):
                continue
            for path in job_dir.iterdir():
                # A second worker purging at the same time may get there first.
                with contextlib.suppress(FileNotFoundError):
                    if path.is_file() and path.stat().st_mtime < cutoff:
                        path.unlink()
                        if _IMAGE_FILE.match(path.name):
                            purged += 1
            # Fails while anything is left. It can take the folder a put has just made, before
            # the put's file is in it: the put makes it again (`_temporary_file`).
            with contextlib.suppress(OSError):
                job_dir.rmdir()
        return purged


class S3ResultStore:
    """Images as objects in an S3-compatible bucket, under an optional key prefix.

    Credentials, endpoint and region come from the standard AWS variables (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, AWS_REGION or
    AWS_DEFAULT_REGION) or the usual AWS config files and instance roles, as boto3 resolves them.
    """

    # The most S3 lists or deletes in one request; tests lower them to exercise paging.
    list_page_size = 1000
    delete_batch_size = 1000

    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # One client per store: creating one costs milliseconds and no network, and a client is
        # safe to share between threads.
        self._client = _s3_client()

    @property
    def supports_presigned_urls(self) -> bool:
        return True

    def _key(self, job_id: str, index: int, fmt: OutputFormat) -> str:
        name = _image_name(job_id, index, fmt)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _failure(self, doing: str, key: str, exc: Exception) -> ResultStoreError:
        return ResultStoreError(f"could not {doing} s3://{self.bucket}/{key}: {_reason(exc)}")

    def put(self, job_id: str, index: int, data: bytes, fmt: OutputFormat) -> None:
        key = self._key(job_id, index, fmt)
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=fmt.content_type
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._failure("store", key, exc) from exc

    def get(self, job_id: str, index: int, fmt: OutputFormat) -> StoredImage | None:
        if not JOB_ID.match(job_id):
            return None
        key = self._key(job_id, index, fmt)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            data: bytes = response["Body"].read()
        except ClientError as exc:
            # Without s3:ListBucket, AWS answers a missing key with AccessDenied instead, which
            # is then reported as a failure: grant it (purges need it anyway).
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._failure("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._failure("read", key, exc) from exc
        return StoredImage(data, fmt.content_type)

    def presigned_url(self, job_id: str, index: int, fmt: OutputFormat, expires_in_s: int) -> str:
        key = self._key(job_id, index, fmt)
        try:
            url: str = self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": key},
                ExpiresIn=max(1, min(int(expires_in_s), MAX_PRESIGN_S)),
            )
        except BotoCoreError as exc:  # e.g. no credentials to sign with
            raise self._failure("presign", key, exc) from exc
        return url

    def purge_older_than(self, age_s: float) -> int:
        """Delete every image object last modified more than `age_s` ago; return how many images.

        Only keys laid out as images under the prefix are considered, so a prefix shared with
        anything else (or a longer prefix beside this one) is left alone.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=age_s)
        list_prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=list_prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            expired = [
                obj["Key"]
                for page in pages
                for obj in page.get("Contents", [])
                if _is_image_key(obj["Key"][len(list_prefix) :]) and obj["LastModified"] < cutoff
            ]
            for start in range(0, len(expired), self.delete_batch_size):
                batch = expired[start : start + self.delete_batch_size]
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
                # A batch delete reports per-key failures in its body rather than raising.
                if errors := response.get("Errors"):
                    first = errors[0]
                    raise ResultStoreError(
                        f"could not delete {len(errors)} of {len(batch)} objects in "
                        f"s3://{self.bucket}/{list_prefix}, first {first.get('Key')}: "
                        f"{first.get('Code')}: {first.get('Message')}"
                    )
        except (BotoCoreError, ClientError) as exc:
            raise self._failure("purge", list_prefix, exc) from exc
        return len(expired)


def _is_image_key(name: str) -> bool:
    job_id, _, file = name.partition("/")
    return bool(JOB_ID.match(job_id) and _IMAGE_FILE.match(file))


def _s3_client() -> Any:
    # botocore reads AWS_DEFAULT_REGION only; AWS_REGION is what most other SDKs and docs use.
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    # A session of its own: the default one is module state shared by every thread, and boto3
    # sessions are not safe to build clients from concurrently. Most of a client's cost (loading
    # the service's JSON model) is paid once per session, so both clients below share this one.
    session = boto3.session.Session()

    def make(addressing_style: str) -> Any:
        config = Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"mode": "standard", "max_attempts": 3},
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
        )
        return session.client("s3", region_name=region, config=config)

    # "auto" picks path-style addressing whenever an endpoint is configured (MinIO and most
    # self-hosted stores need it; R2 accepts it) and virtual-hosted style on AWS. But on AWS
    # "auto" also presigns against the legacy global host (bucket.s3.amazonaws.com), which
    # opt-in regions refuse and young buckets answer with a redirect; "virtual" presigns against
    # the bucket's own region. So: resolve the endpoint with "auto", and switch to "virtual"
    # only where that endpoint is AWS itself.
    client = make("auto")
    host = urlsplit(client.meta.endpoint_url).hostname or ""
    if host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
        client = make("virtual")
    return client


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reason(exc: Exception) -> str:
    # botocore's messages name the operation, the error code and S3's own explanation (or the
    # endpoint it could not reach); none of them includes a credential.
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class _LocalUrl:
    root: Path


@dataclass(frozen=True)
class _S3Url:
    bucket: str
    prefix: str


def _parse(url: str) -> _LocalUrl | _S3Url:
    # No part of a refused URL is echoed: it may hold a credential put there by mistake.
    # Schemes are matched as written, lowercase, as the rest of the configuration compares them.
    scheme = url[: url.find("://") + 3] if "://" in url else ""
    rest = url[len(scheme) :]
    if scheme == _FILE_SCHEME:
        # Everything after the scheme is the path, so file://./results and file://results are
        # relative to the working directory and file:///srv/results is absolute.
        if not rest:
            raise ResultStoreError(f"result store URL has no path; expected {_ACCEPTED}")
        return _LocalUrl(Path(rest))
    if scheme == _S3_SCHEME:
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket):
            raise ResultStoreError(
                "result store URL has no valid bucket: s3://BUCKET[/PREFIX] needs a bucket of "
                "3-63 lowercase letters, digits, dots and hyphens"
            )
        prefix = prefix.strip("/")
        if any(c in prefix for c in "?#") or "//" in prefix:
            raise ResultStoreError(
                "result store URL has a malformed prefix: no empty segments, '?' or '#'"
            )
        return _S3Url(bucket, prefix)
    raise ResultStoreError(f"result store URL must be {_ACCEPTED}")


def check_result_store_url(url: str) -> str:
    """`url` if it names a store `open_result_store` accepts, else ValueError. No I/O."""
    try:
        _parse(url)
    except ResultStoreError as exc:
        raise ValueError(str(exc)) from None
    return url


def open_result_store(url: str) -> ResultStore:
    """The store `url` names: `file://PATH` (relative or absolute) or `s3://BUCKET[/PREFIX]`."""
    parsed = _parse(url)
    if isinstance(parsed, _LocalUrl):
        return LocalResultStore(parsed.root)
    return S3ResultStore(parsed.bucket, parsed.prefix)
