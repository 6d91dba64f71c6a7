"""API settings, read from the environment once at start; bad values stop the process."""

from __future__ import annotations

from pydantic import Field

from common.settings import CommonSettings


class ApiSettings(CommonSettings):
    max_queued_jobs: int = Field(
        default=100, ge=1, description="Queue depth beyond which POST /v1/generate answers 429."
    )
    job_timeout_s: int = Field(
        default=900, ge=10, description="Longest a worker may spend on one job before RQ stops it."
    )
    job_retries: int = Field(
        default=1, ge=0, le=5, description="Re-runs of a job whose worker died while running it."
    )
