"""OpenAI's Images API (`POST /v1/images/generations`) over this service's jobs.

Its request and response models, its error shape, the quality → steps table, and the
translation of its body into the `GenerateRequest` every job starts from. The route
(`service/routes/images.py`) stays thin: it submits, waits and shapes the answer with these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from common.contract import (
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MODEL_NAME_PATTERN,
    GenerateRequest,
    JobStatus,
    ModelInfo,
    NegativePrompt,
    OutputFormat,
    Prompt,
)
from common.jobstore import JobRecord
from service.errors import ApiError, InvalidParameter

# The longest the route holds a request for its job. Generation is minutes-long at worst on
# this service (four 1 MP images on SD3.5 Large, or a job queued behind a few others), OpenAI's
# own image endpoint also answers only when its images exist, and the `openai` SDK waits 600 s
# by default: 300 s covers real jobs with margin yet answers well inside the SDK's timeout.
# A client may ask for less with `Prefer: wait=N`. Past it the job goes on: see `unfinished_error`.
WAIT_MAX_S = 300
# Where every answer of the route names its job, so a client can follow it at /v1/jobs/{id}.
JOB_ID_HEADER = "x-sd3serve-job-id"

Quality = Literal["low", "medium", "high", "auto", "standard", "hd"]
ReportedQuality = Literal["low", "medium", "high"]

# OpenAI's quality → (the model's default steps divided by this, the tier reported back).
# `standard` and `hd` are DALL·E 3's names, still sent by clients written for it: standard is
# its default quality (= auto) and hd its best (= high). A model's default steps are its best
# quality, so no tier goes beyond them.
QUALITY_TABLE: dict[str, tuple[int, ReportedQuality]] = {
    "low": (4, "low"),
    "medium": (2, "medium"),
    "high": (1, "high"),
    "auto": (1, "high"),
    "standard": (1, "high"),
    "hd": (1, "high"),
}


def quality_steps(quality: Quality | None, default_steps: int) -> int:
    """Denoising steps for an OpenAI quality on a model whose default is `default_steps`."""
    divisor, _ = QUALITY_TABLE[quality or "auto"]
    return max(1, default_steps // divisor)


_SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")


class ImageGenerationRequest(BaseModel):
    """OpenAI's image generation body, plus this service's own fields (the SDK's `extra_body`).

    Unknown fields are refused, as on /v1/generate; every field the `openai` SDK's
    `images.generate()` commonly sends is known, and those this service cannot honour are
    either accepted and ignored (documented on each) or refused where ignoring would lie.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt = Field(
        description=f"What to draw: 1 to {MAX_PROMPT_CHARS} characters after trimming."
    )
    model: str | None = Field(
        default=None,
        pattern=MODEL_NAME_PATTERN,
        description="An `id` from GET /v1/models. Default: as for /v1/generate.",
    )
    n: int | None = Field(
        default=None, ge=1, le=MAX_IMAGES, description=f"Images, 1..{MAX_IMAGES}; default 1."
    )
    size: str | None = Field(
        default=None,
        description=(
            "`WIDTHxHEIGHT` within the model's limits (GET /v1/models), or `auto` (default): "
            "the model's default size."
        ),
        examples=["1024x1024", "auto"],
    )
    quality: Quality | None = Field(
        default=None,
        description=(
            "Denoising steps as a share of the model's `default_steps`: low ¼, medium ½, "
            "high, auto (default), standard and hd all of them (at least 1). `steps` overrides."
        ),
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        default=None,
        description="`b64_json` (default): the image bytes inline; `url`: the job's image link.",
    )
    output_format: OutputFormat | None = Field(default=None, description="png (default).")
    background: Literal["auto", "opaque"] | None = Field(
        default=None, description="The images are always opaque; `transparent` is refused."
    )
    output_compression: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Accepted and ignored: JPEG and WebP are encoded at a fixed quality.",
    )
    moderation: Literal["low", "auto"] | None = Field(
        default=None, description="Accepted and ignored: this service does not moderate."
    )
    style: Literal["vivid", "natural"] | None = Field(
        default=None, description="Accepted and ignored (DALL·E 3's prompt rewriting)."
    )
    user: str | None = Field(default=None, description="Accepted and ignored.")
    safety_identifier: str | None = Field(default=None, description="Accepted and ignored.")
    stream: bool | None = Field(
        default=None, description="Only false: follow GET /v1/jobs/{id}/events for progress."
    )
    # This service's own fields, as on /v1/generate.
    negative_prompt: NegativePrompt = Field(default="", description="As on /v1/generate.")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="As on /v1/generate.")
    steps: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="As on /v1/generate; overrides `quality`."
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=MAX_GUIDANCE,
        allow_inf_nan=False,
        description="As on /v1/generate.",
    )

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and value != "auto" and not _SIZE.match(value):
            raise PydanticCustomError(
                "invalid_size",
                "must be 'auto' or WIDTHxHEIGHT in pixels, e.g. '1024x1024'; got '{size}'",
                {"size": value},
            )
        return value

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value: bool | None) -> bool | None:
        if value:
            raise PydanticCustomError(
                "unsupported_value",
                "streaming is not supported; follow GET /v1/jobs/{id}/events for progress",
            )
        return value

    def dimensions(self) -> tuple[int | None, int | None]:
        match = _SIZE.match(self.size or "")
        return (int(match[1]), int(match[2])) if match else (None, None)


class ImageData(BaseModel):
    b64_json: str | None = Field(default=None, description="The image's bytes, base64.")
    url: str | None = Field(
        default=None,
        description="The image: the API's image route, or a presigned object-store URL.",
    )


class ImagesResponse(BaseModel):
    """OpenAI's answer, with the fields that are true here, and this service's job id."""

    created: int = Field(description="Unix time the images were made.")
    data: list[ImageData]
    background: Literal["opaque"] = "opaque"
    output_format: OutputFormat
    size: str = Field(description="`WIDTHxHEIGHT` of the images.")
    quality: ReportedQuality | None = Field(
        default=None, description="The tier run; absent when `steps` was given."
    )
    job_id: str = Field(description="This service's job: GET /v1/jobs/{job_id}.")


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error, server_error...")
    param: str | None = Field(default=None, description="The offending request field.")
    code: str | None = None
    job_id: str | None = Field(default=None, description="The job, once one was created.")


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error shape, used by the OpenAI-compatible routes only."""

    error: OpenAIErrorBody


class OpenAIError(Exception):
    """An answer in OpenAI's error shape, raised by the route and rendered by its route class."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None,
        param: str | None = None,
        job_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.job_id = job_id
        self.headers = dict(headers or {})
        if job_id is not None:
            # The job exists and goes on (or has ended): an SDK retry would only duplicate it.
            self.headers |= {JOB_ID_HEADER: job_id, "x-should-retry": "false"}

    @property
    def type(self) -> str:
        if self.status == 429:
            return "rate_limit_error"
        if self.status == 409:
            return "conflict_error"
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def response(self) -> JSONResponse:
        # OpenAI always sends `param` and `code`, null or not; `job_id` is sent when there is one.
        body = OpenAIErrorBody(
            message=self.message,
            type=self.type,
            param=self.param,
            code=self.code,
            job_id=self.job_id,
        ).model_dump(exclude={"job_id"} if self.job_id is None else None)
        return JSONResponse({"error": body}, status_code=self.status, headers=self.headers)


# This service's field names where OpenAI's differ.
_PARAM = {"width": "size", "height": "size", "num_images": "n"}
_CODES = {
    "extra_forbidden": "unknown_parameter",
    "missing": "missing_required_parameter",
    "json_invalid": "invalid_json",
}


def _field(loc: Sequence[int | str]) -> str | None:
    parts = [str(p) for p in loc]
    if parts[:1] == ["body"]:
        parts = parts[1:]
    if not parts or parts[0].isdigit():  # the whole body, or a JSON parse position
        return None
    return parts[0]


def invalid_request(errors: Sequence[Mapping[str, Any]]) -> OpenAIError:
    """400 from pydantic's (or FastAPI's) errors, naming the first offending field."""
    parts, first_param, first_code = [], None, "invalid_value"
    for i, err in enumerate(errors):
        field = _field(err.get("loc", ()))
        param = _PARAM.get(field, field) if field else None
        kind = str(err.get("type", ""))
        message = str(err.get("msg", "invalid value"))
        if kind == "extra_forbidden":
            message = "unknown parameter; see this endpoint's schema in /openapi.json"
        elif kind == "json_invalid":
            message = f"the body is not valid JSON: {err.get('ctx', {}).get('error', message)}"
        parts.append(f"{field}: {message}" if field else message)
        if i == 0:
            first_param, first_code = param, _CODES.get(kind, "invalid_value")
    return OpenAIError(
        400, "; ".join(parts) or "invalid request", code=first_code, param=first_param
    )


def from_api_error(exc: ApiError, body: ImageGenerationRequest | None = None) -> OpenAIError:
    """One of this service's errors in OpenAI's shape.

    Our 422 (a parameter out of bounds, an unknown model) is OpenAI's 400: OpenAI answers 400
    for invalid requests and the `openai` SDK raises `BadRequestError` only for that status.
    """
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
    if isinstance(exc, InvalidParameter):
        param = _PARAM.get(exc.field, exc.field) if exc.field else None
        message = exc.message
        if param == "size" and body is not None and body.size:
            message = f"size {body.size}: {message}"
        return OpenAIError(400, message, code="invalid_value", param=param, headers=headers)
    return OpenAIError(exc.status, exc.message, code=exc.code, param=exc.field, headers=headers)


def to_generate_request(body: ImageGenerationRequest) -> GenerateRequest:
    """The job request, before quality is resolved against the model (see `with_quality`)."""
    width, height = body.dimensions()
    try:
        return GenerateRequest(
            model=body.model,
            prompt=body.prompt,
            negative_prompt=body.negative_prompt,
            width=width,
            height=height,
            steps=body.steps,
            guidance_scale=body.guidance_scale,
            seed=body.seed,
            num_images=body.n or 1,
            output_format=body.output_format or OutputFormat.png,
        )
    except ValidationError as exc:  # a side out of the schema's hard bounds (8..4096)
        error = invalid_request(exc.errors())
        if error.param == "size":
            error.message = f"size {body.size}: {error.message}"
        raise error from exc


def with_quality(
    request: GenerateRequest, info: ModelInfo, *, body: ImageGenerationRequest
) -> GenerateRequest:
    """The request on the model `info` describes, with the steps its `quality` stands for
    there (the model's default steps, divided); `steps` wins over `quality`."""
    if body.steps is not None:
        return request.model_copy(update={"model": info.id})
    steps = quality_steps(body.quality, info.default_steps)
    return request.model_copy(update={"model": info.id, "steps": steps})


def reported_quality(body: ImageGenerationRequest) -> ReportedQuality | None:
    """The quality tier to report: none when `steps` was given, since no tier was run."""
    return None if body.steps is not None else QUALITY_TABLE[body.quality or "auto"][1]


def unfinished_error(record: JobRecord, job_url: str, waited_s: int) -> OpenAIError | None:
    """The error for a job that did not succeed in time, or None when it succeeded.

    - failed: 500 `server_error`, as OpenAI answers when its own generation fails: the request
      was valid (it passed validation and became a job) and the server could not make the
      images; the message is the job's own reason.
    - canceled (DELETE /v1/jobs/{id} while this request waited): 409, the request conflicts
      with what happened to its job; nothing failed, so not a 5xx.
    - still queued or running after the wait: 504, as a gateway whose upstream (the worker
      pool) has not answered in time. The job is not lost: the error names it, and
      `x-should-retry: false` keeps the SDK from queueing a duplicate.
    """
    job = record.id
    if record.status is JobStatus.succeeded:
        return None
    if record.status is JobStatus.failed:
        reason = record.error or "the generation failed"
        return OpenAIError(500, f"job {job} failed: {reason}", code="generation_failed", job_id=job)
    if record.status is JobStatus.canceled:
        reason = f": {record.error}" if record.error else ""
        return OpenAIError(409, f"job {job} was canceled{reason}", code="job_canceled", job_id=job)
    return OpenAIError(
        504,
        f"job {job} is still {record.status} after {waited_s} s; follow it at {job_url}",
        code="timeout",
        job_id=job,
        headers={"Location": job_url},
    )
