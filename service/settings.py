"""API settings, read from the environment once at start; bad values stop the process."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from common.contract import MODEL_NAME_PATTERN
from common.settings import CommonSettings


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
    job_timeout_s: int = Field(
        default=900, ge=10, description="Longest a worker may spend on one job before RQ stops it."
    )
    job_retries: int = Field(
        default=1, ge=0, le=5, description="Re-runs of a job whose worker died while running it."
    )

    @model_validator(mode="after")
    def _presigned_needs_an_object_store(self) -> ApiSettings:
        if self.result_urls == "presigned" and not self.result_store.startswith("s3://"):
            raise ValueError(
                "SD3SERVE_RESULT_URLS=presigned needs an object store: set SD3SERVE_RESULT_STORE "
                "to s3://BUCKET/PREFIX"
            )
        return self
