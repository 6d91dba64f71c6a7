"""What a job is: the request a client sends, the parameters a worker runs, and the job's states.

Both the API and the workers import this module, so it must stay free of torch and diffusers.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    WithJsonSchema,
)

MAX_PROMPT_CHARS = 2000
MAX_STEPS = 100
MAX_GUIDANCE = 20.0
MAX_SEED = 2**32 - 1
MAX_IMAGES = 4
# Hard ceilings of the schema; each model narrows them further (see ModelInfo).
MIN_SIDE = 8
MAX_SIDE = 4096
# Job ids are uuid4 hex; they reach Redis keys, object keys and file names from URLs.
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
JOB_ID = re.compile(JOB_ID_PATTERN)
# Model names reach Redis keys, RQ queue names and URLs: a conservative, OpenAI-like alphabet.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
# What StableDiffusion3Pipeline pads T5 to when a folder declares no max_sequence_length.
PIPELINE_MAX_SEQUENCE_LENGTH = 256


class ServingDefaults(BaseModel):
    """A model folder's `sd3_serve.json`: how the model is meant to be called.

    Every field is optional; what a folder leaves out falls back to the worker's settings
    (steps, guidance) or the pipeline's own default (the T5 context length).
    """

    model_config = ConfigDict(extra="forbid")

    FILE: ClassVar[str] = "sd3_serve.json"

    default_steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    default_guidance_scale: float | None = Field(default=None, ge=0.0, le=MAX_GUIDANCE)
    max_sequence_length: int | None = Field(
        default=None, ge=1, description="The T5 context length the model was trained with."
    )

    @classmethod
    def load(cls, model_dir: Path) -> ServingDefaults:
        """The folder's file, or all defaults (hub ids, folders without one)."""
        path = model_dir / cls.FILE
        return cls.model_validate_json(path.read_text()) if path.is_file() else cls()

    def save(self, model_dir: Path) -> Path:
        path = model_dir / self.FILE
        path.write_text(self.model_dump_json(indent=1, exclude_none=True) + "\n")
        return path


class OutputFormat(StrEnum):
    png = "png"
    jpeg = "jpeg"
    webp = "webp"

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


# The states a webhook can report: every one but `queued`, which the answer to the request is.
WEBHOOK_EVENTS = [s.value for s in JobStatus if s is not JobStatus.queued]
DEFAULT_WEBHOOK_EVENTS = [s for s in JobStatus if s.terminal]


def _webhook_event(value: object) -> object:
    # Before JobStatus's own check, whose message would offer `queued`.
    if value not in WEBHOOK_EVENTS:
        raise ValueError(f"unknown event {value!r}; choose from {', '.join(WEBHOOK_EVENTS)}")
    return value


WebhookEvent = Annotated[
    JobStatus,
    BeforeValidator(_webhook_event),
    WithJsonSchema({"type": "string", "enum": WEBHOOK_EVENTS}),
]
# Each event is delivered once however often it is named.
WebhookEvents = Annotated[list[WebhookEvent], AfterValidator(lambda e: list(dict.fromkeys(e)))]


class WebhookState(StrEnum):
    """Where the delivery of a webhook event stands."""

    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class WebhookRequest(BaseModel):
    """Where and when to POST the job: `webhook` of POST /v1/generate."""

    model_config = ConfigDict(extra="forbid")

    url: HttpUrl = Field(
        description=(
            "An http or https URL, whose host must resolve to public addresses only; each "
            "delivery is a POST of the job, signed per the Standard Webhooks specification."
        ),
        examples=["https://example.com/hooks/sd3"],
    )
    events: WebhookEvents = Field(
        default=DEFAULT_WEBHOOK_EVENTS,
        min_length=1,
        max_length=len(WEBHOOK_EVENTS),
        description="The job states to be told about, each once. Default: the final states.",
    )


class JobWebhook(BaseModel):
    """A job's webhook and the delivery of its latest event."""

    url: str
    events: list[JobStatus]
    event: JobStatus | None = Field(
        default=None, description="The latest of `events` the job reached; null until one."
    )
    state: WebhookState | None = Field(
        default=None, description="That event's delivery; null until the job reaches an event."
    )
    attempts: int = Field(default=0, description="POSTs of that event so far.")
    last_status: int | None = Field(
        default=None, description="HTTP status of the latest POST; null when it got no answer."
    )


Prompt = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PROMPT_CHARS),
]
NegativePrompt = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=MAX_PROMPT_CHARS)
]


class GenerateRequest(BaseModel):
    """The body of POST /v1/generate. Fields left out take the served model's defaults."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None,
        pattern=MODEL_NAME_PATTERN,
        description=(
            "The model to run, an `id` from GET /v1/models. Default: the service's default "
            "model, or the only model it knows."
        ),
        examples=["sd3-scenes"],
    )
    prompt: Prompt = Field(
        description=f"What to draw: 1 to {MAX_PROMPT_CHARS} characters after trimming whitespace.",
        examples=["a small red circle in the center on a white background"],
    )
    negative_prompt: NegativePrompt = Field(
        default="",
        description=f"What to steer away from: at most {MAX_PROMPT_CHARS} characters.",
    )
    width: int | None = Field(
        default=None,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        description=(
            f"Image width in pixels, {MIN_SIDE}..{MAX_SIDE}, and further a multiple of the "
            "served model's `size_multiple` (16 for SD3 checkpoints) within its "
            "`min_size`..`max_size`: see GET /v1/models. Default: the model's `default_width`."
        ),
    )
    height: int | None = Field(
        default=None,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        description="Image height in pixels; same rules as `width`. Default: `default_height`.",
    )
    steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description=f"Denoising steps, 1..{MAX_STEPS}. Default: the model's `default_steps`.",
    )
    guidance_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=MAX_GUIDANCE,
        allow_inf_nan=False,
        description=(
            f"Classifier-free guidance scale, 0..{MAX_GUIDANCE:g}; 1 or less disables guidance. "
            "Default: the model's `default_guidance_scale`."
        ),
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=MAX_SEED,
        description=(
            f"Random seed, 0..{MAX_SEED}. Image k of the job uses seed + k, so any image can be "
            "reproduced alone. Left out: the service picks one and returns it."
        ),
    )
    num_images: int = Field(default=1, ge=1, le=MAX_IMAGES, description=f"Images, 1..{MAX_IMAGES}.")
    output_format: OutputFormat = Field(
        default=OutputFormat.png,
        description="Stored image encoding: png (parameters in text chunks), jpeg or webp.",
    )
    webhook: WebhookRequest | None = Field(
        default=None,
        description=(
            "POST the job to `url` when it reaches one of `events`, signed with the service's "
            "webhook secret (Standard Webhooks); refused where the service has none."
        ),
    )


class GenerateParams(BaseModel):
    """The fully resolved parameters a worker runs: every default filled in, seed included."""

    model: str = Field(description="The model that runs (or ran) the job.")
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    num_images: int
    output_format: OutputFormat


class Timings(BaseModel):
    """Seconds spent in each phase of a job; null until the phase has happened."""

    queue_wait: float | None = Field(default=None, description="From acceptance to a worker start.")
    inference: float | None = Field(
        default=None, description="The pipeline call (denoise + decode)."
    )
    encode: float | None = Field(default=None, description="Encoding and storing the images.")
    total: float | None = Field(default=None, description="From acceptance to the final state.")


class Progress(BaseModel):
    step: int = Field(description="Denoising steps done.")
    total: int = Field(description="Denoising steps in all.")


def default_max_pixels(width: int, height: int) -> int:
    """A job's pixel budget when its workers set none: MAX_IMAGES images of width × height."""
    return MAX_IMAGES * width * height


class ModelInfo(BaseModel):
    """A served model, published by each of its workers with every heartbeat once warm."""

    id: str = Field(
        description="The model's name (SD3SERVE_MODEL_NAME): what requests put in `model`.",
        pattern=MODEL_NAME_PATTERN,
    )
    source: str = Field(description="What the workers loaded (SD3SERVE_MODEL): a folder or hub id.")
    pipeline: str = Field(description="The diffusers pipeline class.")
    device: str
    dtype: str
    size_multiple: int = Field(description="Width and height must be multiples of this.")
    min_size: int
    max_size: int
    default_width: int
    default_height: int
    default_steps: int
    default_guidance_scale: float
    max_steps: int = MAX_STEPS
    max_num_images: int = MAX_IMAGES
    # Workers older than this field publish records without it: they get the default rule.
    max_pixels: int = Field(
        default_factory=lambda f: default_max_pixels(f["default_width"], f["default_height"]),
        ge=1,
        description=(
            "Most pixels one job may make, width × height × num_images (SD3SERVE_MAX_PIXELS of "
            "its workers); by default 4 images at the native size, default_width × "
            "default_height."
        ),
    )
    scheduler: str
    scheduler_shift: float
    text_encoders: list[str] = Field(description="Loaded text encoders (T5 may be dropped).")

    def size_refusal(self, width: int, height: int, num_images: int = 1) -> tuple[str, str] | None:
        """Why this model does not make `num_images` images of width × height, and the field
        to blame (width, height or num_images); None when it does. The one statement of the
        size rules, for the API's requests and the workers' warm sizes alike."""
        for name, side in (("width", width), ("height", height)):
            if side % self.size_multiple:
                lower = side - side % self.size_multiple
                near = [
                    size
                    for size in (lower, lower + self.size_multiple)
                    if self.min_size <= size <= self.max_size
                ] or [min(max(side, self.min_size), self.max_size)]
                return name, (
                    f"{name} must be a multiple of {self.size_multiple} (the model's VAE scale "
                    f"factor times its patch size); got {side}, try "
                    + " or ".join(str(size) for size in near)
                )
            if not self.min_size <= side <= self.max_size:
                return name, (
                    f"{name} must be between {self.min_size} and {self.max_size} for model "
                    f"{self.id!r}; got {side}"
                )
        image = width * height
        if image * num_images <= self.max_pixels:
            return None
        budget = (
            f"model {self.id!r} makes at most {self.max_pixels:,} pixels per job (width × height "
            "× num_images: its max_pixels in GET /v1/models)"
        )
        if image <= self.max_pixels:
            return "num_images", (
                f"{num_images} images of {width}×{height} are {image * num_images:,} pixels, and "
                f"{budget}: ask for at most {self.max_pixels // image} at this size"
            )
        return "width", (
            f"one {width}×{height} image is {image:,} pixels, and {budget}: ask for a smaller size"
        )


# The RQ function the API enqueues, by path, so the API never imports the worker package.
GENERATE_TASK = "worker.tasks.generate"
