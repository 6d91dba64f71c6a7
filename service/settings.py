"""API settings, read from the environment once at start; bad values stop the process."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from standardwebhooks import Webhook

from common.contract import MODEL_NAME_PATTERN
from common.settings import CommonSettings
from service.auth import parse_rate


class ApiSettings(CommonSettings):
    api_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "uvicorn processes serving the API; metrics are aggregated across them "
            "(Prometheus multiprocess mode)."
        ),
    )
    access_log: bool = Field(
        default=True,
        description=(
            "uvicorn's log line per request. Off saves API CPU at high request rates; the "
            "request metrics count every request either way."
        ),
    )
    default_model: str | None = Field(
        default=None,
        pattern=MODEL_NAME_PATTERN,
        description=(
            "Model for requests that name none; unset: the only known model (with several "
            "known, such a request is refused, naming them)."
        ),
    )
    result_urls: Literal["api", "presigned"] = Field(
        default="api",
        description=(
            "Image links in a job: `api` (the API streams the image from the store) or "
            "`presigned` (presigned GET URLs of the object store, expiring with the job)."
        ),
    )
    max_queued_jobs: int = Field(
        default=100,
        ge=1,
        description="Jobs queued for one model beyond which POST /v1/generate answers 429.",
    )
    max_queued_jobs_per_key: int = Field(
        default=20,
        ge=1,
        description=(
            "Jobs one API key may have queued at once (with SD3SERVE_API_KEYS_FILE), so that "
            "one client cannot fill a model's queue for all; past it, 429."
        ),
    )
    max_streams: int = Field(
        default=1000,
        ge=1,
        description=(
            "Event streams (SSE clients and `Prefer: wait` requests) one API process holds at "
            "once; past it, new streams get 503 with Retry-After and `Prefer: wait` answers "
            "at once. Every other request is unaffected."
        ),
    )
    job_timeout_s: int = Field(
        default=900, ge=10, description="Longest a worker may spend on one job before RQ stops it."
    )
    job_retries: int = Field(
        default=1, ge=0, le=5, description="Re-runs of a job whose worker died while running it."
    )
    max_body_bytes: int = Field(
        default=65536,
        ge=1024,
        description=(
            "Largest request body accepted, in bytes; a larger one gets 413 before it is read "
            "in full."
        ),
    )
    api_keys_file: Path | None = Field(
        default=None,
        description=(
            "File of API keys, one `NAME SHA256-OF-KEY [RATE]` a line (`sd3-serve keys "
            "create`); set: every /v1 request needs `Authorization: Bearer KEY`, a job is "
            "visible to its key only, and each key is rate limited. Unset: no keys, no limits."
        ),
    )
    rate_limit: str = Field(
        default="60/minute",
        description=(
            "Requests one API key may make to /v1, `COUNT/second|minute|hour|day` over a "
            "moving window kept in Redis (shared by every API process); a key's RATE in the "
            "keys file overrides it. Past it: 429 with Retry-After."
        ),
    )
    metrics_require_key: bool = Field(
        default=False,
        description="Make /metrics need an API key too (with SD3SERVE_API_KEYS_FILE only).",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description=(
            "Key signing webhook deliveries, `whsec_` then base64 (Standard Webhooks); unset: "
            "requests with a `webhook` are refused."
        ),
    )
    webhook_max_attempts: int = Field(
        default=5, ge=1, le=50, description="POSTs of one webhook event before it is given up."
    )
    webhook_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Longest one webhook POST may take, name lookup and connection included.",
    )
    webhook_backoff_s: float = Field(
        default=2.0,
        gt=0,
        description=(
            "Wait before the second POST of a webhook event; it doubles with each further "
            "attempt, with random jitter."
        ),
    )
    webhook_backoff_max_s: float = Field(
        default=600.0, gt=0, description="Longest wait between two POSTs of a webhook event."
    )
    webhook_allow_private: bool = Field(
        default=False,
        description=(
            "Let webhooks reach loopback, private, link-local and other non-public addresses "
            "(development and tests only: it lets clients make the API call internal services)."
        ),
    )

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _standard_webhooks_secret(cls, value: object) -> object:
        # Empty, as a compose file passes an unset variable through: no webhooks.
        if value in ("", None):
            return None
        secret = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        try:
            if not secret.startswith("whsec_"):
                raise ValueError
            Webhook(secret)
        except Exception:
            raise ValueError("must be `whsec_` followed by non-empty base64") from None
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate(cls, value: str) -> str:
        parse_rate(value)
        return value

    @model_validator(mode="after")
    def _metrics_key_needs_keys(self) -> ApiSettings:
        if self.metrics_require_key and self.api_keys_file is None:
            raise ValueError(
                "SD3SERVE_METRICS_REQUIRE_KEY=true needs keys: set SD3SERVE_API_KEYS_FILE"
            )
        return self

    @model_validator(mode="after")
    def _presigned_needs_an_object_store(self) -> ApiSettings:
        if self.result_urls == "presigned" and not self.result_store.startswith("s3://"):
            raise ValueError(
                "SD3SERVE_RESULT_URLS=presigned needs an object store: set SD3SERVE_RESULT_STORE "
                "to s3://BUCKET/PREFIX"
            )
        return self
