"""Settings both processes read from the environment; each process extends them with its own."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, RedisDsn
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.results import LocalResultStore, ResultStore


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    redis_url: RedisDsn = Field(
        default=RedisDsn("redis://127.0.0.1:6379/0"),
        description="Redis holding the queue, job records and worker heartbeats.",
    )
    queue_name: str = Field(default="sd3serve", min_length=1, description="RQ queue name.")
    results_dir: Path = Field(
        default=Path("./sd3serve-results"),
        description="Folder of stored images, shared by the API and the workers.",
    )
    result_ttl_s: int = Field(
        default=24 * 3600,
        ge=60,
        description="How long job records and images are kept after a job ends, in seconds.",
    )

    def result_store(self) -> ResultStore:
        return LocalResultStore(self.results_dir)
