"""The API's response models (the request body is the shared `common.contract.GenerateRequest`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.contract import GenerateParams, JobStatus, JobWebhook, ModelInfo, Progress, Timings
from service.queue import POSITION_MAX_AGE_S

OWNED_BY = "sd3-serve"

# Examples for the OpenAPI document: one consistent story, a finished job on the bundled model.
EXAMPLE_JOB_ID = "3f2c8a9e5b7d4c1e8a6f0b2d4c6e8a0f"
EXAMPLE_JOB_URL = f"http://127.0.0.1:8000/v1/jobs/{EXAMPLE_JOB_ID}"
EXAMPLE_ERROR: dict[str, Any] = {
    "error": {
        "code": "invalid_parameter",
        "message": "width: Input should be less than or equal to 4096",
        "field": "width",
        "details": [{"field": "width", "message": "Input should be less than or equal to 4096"}],
    }
}
EXAMPLE_JOB: dict[str, Any] = {
    "id": EXAMPLE_JOB_ID,
    "status": "succeeded",
    "model": "sd3-scenes",
    "queue_position": None,
    "progress": {"step": 28, "total": 28},
    "params": {
        "model": "sd3-scenes",
        "prompt": "a small red circle in the center on a white background",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 28,
        "guidance_scale": 2.0,
        "seed": 42,
        "num_images": 1,
        "output_format": "png",
    },
    "timings": {"queue_wait": 0.012, "inference": 1.84, "encode": 0.004, "total": 1.87},
    "error": None,
    "cancel_requested": False,
    "attempts": 1,
    "webhook": {
        "url": "https://example.com/hooks/sd3",
        "events": ["succeeded", "failed", "canceled"],
        "event": "succeeded",
        "state": "delivered",
        "attempts": 1,
        "last_status": 200,
    },
    "created_at": 1767225600.0,
    "finished_at": 1767225601.87,
    "links": {
        "self": EXAMPLE_JOB_URL,
        "events": f"{EXAMPLE_JOB_URL}/events",
        "images": [f"{EXAMPLE_JOB_URL}/images/0"],
    },
}
EXAMPLE_MODEL: dict[str, Any] = {
    "object": "model",
    "id": "sd3-scenes",
    "created": 1767225000,
    "owned_by": OWNED_BY,
    "source": "bundled",
    "pipeline": "StableDiffusion3Pipeline",
    "device": "cpu",
    "dtype": "float32",
    "size_multiple": 4,
    "min_size": 64,
    "max_size": 256,
    "default_width": 64,
    "default_height": 64,
    "default_steps": 28,
    "default_guidance_scale": 2.0,
    "max_steps": 100,
    "max_num_images": 4,
    "max_pixels": 16384,
    "scheduler": "FlowMatchEulerDiscreteScheduler",
    "scheduler_shift": 3.0,
    "text_encoders": [
        "CLIPTextModelWithProjection",
        "CLIPTextModelWithProjection",
        "T5EncoderModel",
    ],
    "workers_ready": 1,
    "queue_depth": 0,
}


class FieldError(BaseModel):
    field: str = Field(description="The offending field, e.g. `width` or `prefer`.")
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `invalid_parameter`.")
    message: str = Field(description="What went wrong and how to fix it.")
    field: str | None = Field(default=None, description="The first offending field, if any.")
    details: list[FieldError] = Field(default_factory=list, description="Every offending field.")


class ErrorResponse(BaseModel):
    """Every error of this API has this shape (the OpenAI-compatible route answers in OpenAI's)."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_ERROR]})

    error: ErrorBody


class JobLinks(BaseModel):
    self: str = Field(description="This job: GET for its state, DELETE to cancel it.")
    events: str = Field(description="The job's Server-Sent Events.")
    images: list[str] = Field(
        default_factory=list,
        description=(
            "One URL per stored image: the API's image route, or a presigned object-store URL "
            "that expires with the job (SD3SERVE_RESULT_URLS=presigned)."
        ),
    )


class JobResponse(BaseModel):
    """A job: its state, the parameters it runs with, its timings and its links."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_JOB]})

    id: str
    status: JobStatus
    model: str = Field(description="The model that runs (or ran) the job.")
    queue_position: int | None = Field(
        default=None,
        description=(
            "Jobs ahead of this one in its model's queue (0 = next), while queued; as of the "
            f"API's latest look at that queue, at most {POSITION_MAX_AGE_S:g} s old. A job "
            "queued since that look counts behind every job queued then; one a worker has "
            "taken but not yet started is 0."
        ),
    )
    progress: Progress | None = Field(default=None, description="Denoising progress.")
    params: GenerateParams = Field(description="The parameters actually used, seed included.")
    timings: Timings
    error: str | None = Field(default=None, description="Why the job failed or was canceled.")
    cancel_requested: bool = False
    attempts: int = Field(default=0, description="Times a worker started this job.")
    webhook: JobWebhook | None = Field(
        default=None, description="The request's webhook and its latest delivery; null without."
    )
    created_at: float = Field(description="Unix time the job was accepted.")
    finished_at: float | None = None
    links: JobLinks


class ModelCard(ModelInfo):
    """One served model: OpenAI's model object, plus this service's limits and availability."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_MODEL]})

    object: Literal["model"] = "model"
    created: int = Field(description="Unix time a worker first published this model.")
    owned_by: str = OWNED_BY
    workers_ready: int = Field(description="Warm workers with a live heartbeat.")
    queue_depth: int = Field(description="Jobs waiting in the model's queue.")


class ModelList(BaseModel):
    """The known models, in OpenAI's list shape."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"object": "list", "data": [EXAMPLE_MODEL]}]}
    )

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ReadyResponse(BaseModel):
    """The API's readiness: Redis answers (warm workers are counted, not required)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ready": True, "redis": True, "workers": 1}]}
    )

    ready: bool = Field(description="Redis answers: the API can accept jobs.")
    redis: bool
    workers: int = Field(
        description="Warm workers with a live heartbeat, all models together (0 is still ready)."
    )


class HealthResponse(BaseModel):
    """The process is up."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: str = "ok"
