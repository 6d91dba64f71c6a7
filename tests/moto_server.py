"""A real S3 endpoint for tests: moto's standalone server, on a free loopback port.

    with moto_server() as s3:
        s3.create_bucket("results")
        env = {**os.environ, **s3.env()}  # for a process that should use it

The server speaks the S3 HTTP API, so the code under test runs its real boto3 client against it,
configured only by the standard AWS variables, as against AWS, MinIO or R2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import boto3
import httpx

from service.dev import Stack, free_port, wait_until

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto accepts any credentials; these only have to be present so boto3 finds some.
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str

    def env(self) -> dict[str, str]:
        """The variables that point a process's boto3 at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
        }

    @cached_property
    def client(self) -> Any:
        """A boto3 S3 client for the test itself (set up and inspect what the code stored)."""
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def create_bucket(self, name: str) -> None:
        self.client.create_bucket(Bucket=name)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1.0)
    except httpx.TransportError:
        return False
    return True  # any HTTP answer at all: the server is up


def start_moto(stack: Stack, start_timeout_s: float = 30.0) -> MotoServer:
    """Start moto's S3 server in `stack` (stopped with it) and return it once it answers."""
    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    stack.start("moto", argv, dict(os.environ))
    wait_until(lambda: _answers(url), stack, "the moto S3 server", start_timeout_s)
    return MotoServer(url)


@contextmanager
def moto_server(start_timeout_s: float = 30.0) -> Iterator[MotoServer]:
    """A moto S3 server of its own, stopped on the way out."""
    stack = Stack()
    try:
        yield start_moto(stack, start_timeout_s)
    finally:
        stack.stop()
