"""Settings both processes read from the environment; each process extends them with its own.

Every variable carries the SD3SERVE_ prefix (so none collides with what Kubernetes injects for
a Service, such as METRICS_PORT), and a `.env` file in the working directory is read too. A
refused value is reported by its variable's name and never echoed: it may hold a password.
"""

from __future__ import annotations

from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, RedisDsn, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.results import ResultStore, check_result_store_url, open_result_store

ENV_PREFIX = "SD3SERVE_"
ENV_FILE = ".env"


def env_var(field: str) -> str:
    """The environment variable of a settings field: `redis_url` -> `SD3SERVE_REDIS_URL`."""
    return f"{ENV_PREFIX}{field.upper()}"


class SettingsError(Exception):
    """A refused setting, worded by its environment variable and without its value."""


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=ENV_FILE, extra="ignore", frozen=True
    )

    redis_url: RedisDsn = Field(
        default=RedisDsn("redis://127.0.0.1:6379/0"),
        description=(
            "Redis holding the queues, job records, model records and heartbeats; "
            "`rediss://` for TLS, a password as `redis://:PASSWORD@host:6379/0`."
        ),
    )
    result_store: str = Field(
        default="file://./sd3serve-results",
        description=(
            "Where images are stored: `file://PATH` (shared by the API and the workers) or "
            "`s3://BUCKET/PREFIX` (credentials and endpoint from the standard AWS variables)."
        ),
    )
    result_ttl_s: int = Field(
        default=24 * 3600,
        ge=60,
        description="How long job records and images are kept after a job ends, in seconds.",
    )

    @field_validator("result_store")
    @classmethod
    def _check_result_store(cls, value: str) -> str:
        return check_result_store_url(value)

    def open_results(self) -> ResultStore:
        return open_result_store(self.result_store)


# Settings classes are only ever built from the environment, with no arguments.
S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Read `cls` from the environment and `.env`, or raise SettingsError naming each variable."""
    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            field = ".".join(str(part) for part in error["loc"])
            # A check across fields has no location; its message names the variables.
            lines.append(f"{prefix}{field.upper()}: {error['msg']}" if field else error["msg"])
        raise SettingsError("invalid setting\n  " + "\n  ".join(lines)) from None


def mask_url(url: str) -> str:
    """The URL with any password replaced, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))
