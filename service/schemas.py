"""The API's response models (the request body is the shared `common.contract.GenerateRequest`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from common.contract import GenerateParams, JobStatus, ModelInfo, Progress, Timings

OWNED_BY = "sd3-serve"


class FieldError(BaseModel):
    field: str = Field(description="The offending field, e.g. `width` or `prefer`.")
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `invalid_parameter`.")
    message: str = Field(description="What went wrong and how to fix it.")
    field: str | None = Field(default=None, description="The first offending field, if any.")
    details: list[FieldError] = Field(default_factory=list, description="Every offending field.")


class ErrorResponse(BaseModel):
    """Every error the API returns has this shape."""

    error: ErrorBody


class JobLinks(BaseModel):
    self: str
    events: str
    images: list[str] = Field(
        default_factory=list,
        description=(
            "One URL per stored image: the API's image route, or a presigned object-store URL "
            "that expires with the job (SD3SERVE_RESULT_URLS=presigned)."
        ),
    )


class JobResponse(BaseModel):
    id: str
    status: JobStatus
    model: str = Field(description="The model that runs (or ran) the job.")
    queue_position: int | None = Field(
        default=None, description="Jobs ahead of this one (0 = next), while queued."
    )
    progress: Progress | None = Field(default=None, description="Denoising progress.")
    params: GenerateParams = Field(description="The parameters actually used, seed included.")
    timings: Timings
    error: str | None = Field(default=None, description="Why the job failed or was canceled.")
    cancel_requested: bool = False
    attempts: int = Field(default=0, description="Times a worker started this job.")
    created_at: float = Field(description="Unix time the job was accepted.")
    finished_at: float | None = None
    links: JobLinks


class ModelCard(ModelInfo):
    """One served model: OpenAI's model object, plus this service's limits and availability."""

    object: Literal["model"] = "model"
    created: int = Field(description="Unix time a worker first published this model.")
    owned_by: str = OWNED_BY
    workers_ready: int = Field(description="Warm workers with a live heartbeat.")
    queue_depth: int = Field(description="Jobs waiting in the model's queue.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ReadyResponse(BaseModel):
    ready: bool = Field(description="Redis answers: the API can accept jobs.")
    redis: bool
    workers: int = Field(
        description="Warm workers with a live heartbeat, all models together (0 is still ready)."
    )


class HealthResponse(BaseModel):
    status: str = "ok"
