"""Worker settings, read from the environment once at start; bad values stop the worker."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from common.contract import MAX_IMAGES, MAX_STEPS, MODEL_NAME, MODEL_NAME_PATTERN
from common.settings import CommonSettings, env_var
from worker.encode import PngEncoder, PngOptions, PngStrategy

BUNDLED = "bundled"
# Trained by `python -m training all --out worker/models/sd3-scenes` (docs/training.md).
BUNDLED_MODEL_DIR = Path(__file__).parent / "models" / "sd3-scenes"

# SD3's ~1 megapixel aspect-ratio buckets, the square sizes people ask for, and the small sizes
# the bundled model serves. Anything else is labelled "other" to keep metric labels bounded.
DEFAULT_RESOLUTIONS = (
    "1024x1024,1152x896,896x1152,1216x832,832x1216,1344x768,768x1344,1536x640,640x1536,"
    "512x512,768x768,64x64,128x128,256x256"
)
# The step counts people use; others are labelled "other", for the same reason.
DEFAULT_STEP_LABELS = "1,2,4,8,12,20,28,30,40,50"


# Each wake of the reporter thread takes the GIL from the denoising thread: at 0.1 s it cost a
# small model's job 6 % of its pipeline time (bench/overhead.py), at 0.25 s about 2 %; four
# updates a second still look live, and a cancel is seen within a quarter second plus a step.
DEFAULT_PROGRESS_INTERVAL_S = 0.25
# One filter and ISA-L wrote a 720x477 photo in 7.6 ms against Pillow's 38.7 ms (its best settings
# below), 758 KB against 650 KB; noise, the tiny model's output, 5 times faster at the same size
# (bench/png.py). A worker between two pipeline calls is a GPU idle, so speed comes first.
DEFAULT_PNG_ENCODER = PngEncoder.fast
# Under the `pillow` encoder, zlib's run-length strategy suits PNG's filtered rows, which are
# mostly small numbers: on a 720x477 photo it wrote a smaller file (650 KB) than the default
# strategy at any level (696 KB at 1, 669 KB at 9) in less time (38 ms against 50 ms at 1 and
# 102 ms at Pillow's default 6, one core). Under it the level changes nothing but 0 (stored).
DEFAULT_PNG_STRATEGY = PngStrategy.rle
DEFAULT_PNG_COMPRESS_LEVEL = 1
DEFAULT_PNG = PngOptions(DEFAULT_PNG_ENCODER, DEFAULT_PNG_COMPRESS_LEVEL, DEFAULT_PNG_STRATEGY)


def _default_worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(CommonSettings):
    model: str = Field(
        default=BUNDLED,
        description=(
            "A local diffusers folder, a hub id (only where the hub is reachable), or "
            "'bundled' for the small scene model trained in-house and shipped in the package."
        ),
    )
    model_name: str | None = Field(
        default=None,
        pattern=MODEL_NAME_PATTERN,
        description=(
            "The name clients ask for and the model's queue is named by; default: the folder's "
            "(or hub id's) last part, `sd3-scenes` for the bundled model."
        ),
    )
    torch_device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
        description="auto: CUDA if present.",
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description=(
            "auto: bfloat16 on CUDA; on a CPU, bfloat16 where it measures faster than float32 "
            "(native bfloat16: AVX512-BF16, AMX), else float32; float32 on other devices."
        ),
    )
    drop_t5: bool = Field(
        default=False,
        description=(
            "Skip the T5 encoder to save memory; a folder without one (no text_encoder_3) "
            "loads without it anyway."
        ),
    )
    vae_tile_above: int = Field(
        default=1024 * 1024,
        ge=64 * 64,
        description=(
            "Images of more pixels than this are decoded by the VAE in overlapping tiles of at "
            "most this many pixels: less memory, some more time."
        ),
    )
    max_batch: int = Field(
        default=MAX_IMAGES,
        ge=1,
        description=(
            "Most images one pipeline call makes: compatible queued jobs (same model, size, steps "
            "and guidance) run together up to this many images, for more jobs per second at "
            "some latency to each. 1 runs every job alone. The default is what one job may ask "
            "for, so a batch never needs more memory than the largest single job."
        ),
    )
    max_pixels: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Most pixels one job may make, width × height × num_images; unset: 4 images at the "
            "model's native size (4 × 1024² for SD3)."
        ),
    )
    default_steps: int = Field(
        default=28,
        ge=1,
        le=MAX_STEPS,
        description="Steps when neither request nor model sets them.",
    )
    default_guidance_scale: float = Field(
        default=7.0, ge=0, le=20, description="Guidance when neither request nor model sets it."
    )
    warmup: bool = Field(default=True, description="Run one small generation before serving.")
    warm_sizes: str | None = Field(
        default=None,
        description=(
            "Comma-separated WxH sizes the warm-up generates at, one 2-step image each (and, "
            "with SD3SERVE_COMPILE, compiles for); unset: the model's smallest size, or its "
            "default size with SD3SERVE_COMPILE."
        ),
    )
    compile: bool = Field(
        default=False,
        description=(
            "torch.compile the transformer at start, for each warm size (SD3SERVE_WARM_SIZES): "
            "faster steps at those sizes for a longer start; other sizes run uncompiled."
        ),
    )
    compile_backend: Literal["inductor", "eager"] = Field(
        default="inductor",
        description=(
            "torch.compile backend: inductor (generated kernels: the speed-up), or eager "
            "(tracing only: compiles in seconds, runs no faster; for telling a tracing problem "
            "from a code-generation one, and for tests)."
        ),
    )
    fuse_qkv: bool = Field(
        default=False,
        description=(
            "Fuse each attention's query, key and value projections into one matrix product: "
            "fewer, larger kernels; changes results by rounding only."
        ),
    )
    sdpa_backend: Literal["auto", "flash", "efficient", "cudnn", "math"] = Field(
        default="auto",
        description=(
            "The transformer's attention kernel (torch.nn.attention.sdpa_kernel); auto: torch "
            "picks per call. efficient and cudnn need CUDA."
        ),
    )
    cpu_offload: Literal["none", "model", "sequential"] = Field(
        default="none",
        description=(
            "Keep weights in CPU memory and move them to the GPU as they run: model (a whole "
            "component at a time) or sequential (a layer at a time: least memory, slowest). "
            "CUDA only."
        ),
    )
    t5_8bit: bool = Field(
        default=False,
        description=(
            "Load the T5 encoder with 8-bit weights (bitsandbytes, the gpu extra): about half "
            "its memory, prompts encoded slightly differently. CUDA only."
        ),
    )
    metrics_host: str = Field(
        default="0.0.0.0", description="Address of /metrics, /healthz and /readyz."
    )
    metrics_port: int = Field(default=9400, ge=0, le=65535, description="0 picks a free port.")
    metrics_resolutions: str = Field(
        default=DEFAULT_RESOLUTIONS, description="Comma-separated WxH labels kept in metrics."
    )
    metrics_steps: str = Field(
        default=DEFAULT_STEP_LABELS, description="Comma-separated step counts kept in metrics."
    )
    heartbeat_s: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description=(
            "Heartbeat period; also how often a worker looks for jobs whose worker is gone."
        ),
    )
    worker_lost_after_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description=(
            "A running job whose worker has given no heartbeat for this long (dead, or frozen) "
            "is put back at the front of its queue, or failed once its retries are used up; at "
            "least three heartbeat periods."
        ),
    )
    maintenance_interval_s: int = Field(
        default=60,
        ge=1,
        description="How often a worker runs RQ's own upkeep of its queue's registries.",
    )
    worker_name: str = Field(
        default_factory=_default_worker_name,
        min_length=1,
        description="Unique worker name; default `<hostname>-<pid>`.",
    )
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch.")
    progress_interval_s: float = Field(
        default=DEFAULT_PROGRESS_INTERVAL_S,
        gt=0,
        le=10,
        description=(
            "How often a worker writes its running jobs' progress (the latest step of each; a "
            "job's last step at once) and reads their cancel requests, off the denoising thread."
        ),
    )
    png_encoder: PngEncoder = Field(
        default=DEFAULT_PNG_ENCODER,
        description=(
            "Who writes a worker's PNG images: `fast` (one filter for every row, ISA-L's deflate; "
            "about 5 times faster, 8-18 % larger on photographs) or `pillow` (Pillow's per-row "
            "filters and zlib, as PNG_COMPRESS_LEVEL and PNG_STRATEGY say; the smallest files)."
        ),
    )
    png_compress_level: int = Field(
        default=DEFAULT_PNG_COMPRESS_LEVEL,
        ge=0,
        le=9,
        description=(
            "zlib level of the PNG images the `pillow` encoder writes, 0 (stored) to 9; above 0 "
            "it matters only under the `default` and `filtered` strategies. PNG is lossless at "
            "every level."
        ),
    )
    png_strategy: PngStrategy = Field(
        default=DEFAULT_PNG_STRATEGY,
        description=(
            "zlib strategy of the PNG images the `pillow` encoder writes: `rle` is fastest and, "
            "on photos, smaller than `default` at any level; `filtered` at 9 is smallest and "
            "slowest."
        ),
    )
    prompt_cache_size: int = Field(
        default=64,
        ge=0,
        description=(
            "Prompt texts whose embeddings a worker keeps on its device (least recently used go "
            "first); 0: none. An entry of SD3 with T5 is about 2.7 MB in bfloat16."
        ),
    )

    @field_validator("metrics_resolutions")
    @classmethod
    def _check_resolutions(cls, value: str) -> str:
        for item in value.split(","):
            w, sep, h = item.strip().partition("x")
            if not (sep and w.isdigit() and h.isdigit()):
                raise ValueError(f"expected WxH entries like 1024x1024, got {item.strip()!r}")
        return value

    @field_validator("warm_sizes")
    @classmethod
    def _check_warm_sizes(cls, value: str | None) -> str | None:
        if value is not None:
            parse_sizes(value)
        return value

    @model_validator(mode="after")
    def _check_accel(self) -> WorkerSettings:
        # What the settings alone can refuse; the device `auto` picks and the model's size
        # limits are checked at load (worker/accel.py).
        if self.compile and not self.warmup:
            raise ValueError(
                f"{env_var('compile')} needs {env_var('warmup')}: the transformer is compiled "
                "by the warm-up, so that no request waits for it"
            )
        if self.compile and self.cpu_offload != "none":
            raise ValueError(
                f"{env_var('compile')} and {env_var('cpu_offload')} do not go together: offload "
                "moves the weights the compiled graph was built around"
            )
        if self.t5_8bit and self.drop_t5:
            raise ValueError(f"{env_var('t5_8bit')} and {env_var('drop_t5')} exclude each other")
        if self.torch_device in ("cpu", "mps") and (names := self.needs_cuda()):
            raise ValueError(
                f"{' and '.join(names)} as set need a CUDA device, and "
                f"{env_var('torch_device')} is {self.torch_device}"
            )
        return self

    def needs_cuda(self) -> list[str]:
        """The variables set to what only CUDA has: offload, 8-bit T5, CUDA-only attention."""
        return [
            env_var(field)
            for field, on in (
                ("cpu_offload", self.cpu_offload != "none"),
                ("t5_8bit", self.t5_8bit),
                ("sdpa_backend", self.sdpa_backend in ("efficient", "cudnn")),
            )
            if on
        ]

    @field_validator("metrics_steps")
    @classmethod
    def _check_steps(cls, value: str) -> str:
        for item in value.split(","):
            if not item.strip().isdigit():
                raise ValueError(f"expected whole step counts like 28, got {item.strip()!r}")
        return value

    @model_validator(mode="after")
    def _check_worker_lost_after(self) -> WorkerSettings:
        if self.worker_lost_after_s < 3 * self.heartbeat_s:
            # Any shorter, and a worker that misses a beat or two, busy or not, would pass for gone.
            raise ValueError(
                f"{env_var('worker_lost_after_s')} must be at least three "
                f"{env_var('heartbeat_s')} periods"
            )
        return self

    @property
    def silence_s(self) -> float:
        """How long a worker may stay silent before its jobs are taken back."""
        return silence_for(self.worker_lost_after_s, self.heartbeat_s)

    @model_validator(mode="after")
    def _check_served_name(self) -> WorkerSettings:
        if not MODEL_NAME.match(self.served_name):
            raise ValueError(
                f"the model's name {self.served_name!r}, taken from SD3SERVE_MODEL, is not a "
                f"valid name ({MODEL_NAME_PATTERN}): set SD3SERVE_MODEL_NAME"
            )
        return self

    @property
    def model_path(self) -> str:
        """The folder or hub id to load."""
        return str(BUNDLED_MODEL_DIR) if self.model == BUNDLED else self.model

    @property
    def served_name(self) -> str:
        """The model's name: SD3SERVE_MODEL_NAME, else the last part of the folder or hub id."""
        if self.model_name:
            return self.model_name
        return Path(self.model_path.rstrip("/")).name

    def png_options(self) -> PngOptions:
        return PngOptions(self.png_encoder, self.png_compress_level, self.png_strategy)

    def resolution_labels(self) -> frozenset[str]:
        return frozenset(item.strip() for item in self.metrics_resolutions.split(","))

    def step_labels(self) -> frozenset[str]:
        return frozenset(str(int(item)) for item in self.metrics_steps.split(","))


# Every warm size is one compiled graph kept for the process's life, and its own compilation
# at start (a minute or so for SD3 on a GPU).
MAX_WARM_SIZES = 8


def parse_sizes(value: str) -> list[tuple[int, int]]:
    """`1024x1024,768x1344` as [(width, height), ...]; ValueError naming the bad entry."""
    sizes: list[tuple[int, int]] = []
    for item in value.split(","):
        w, sep, h = item.strip().partition("x")
        if not (sep and w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            raise ValueError(f"expected WxH entries like 1024x1024, got {item.strip()!r}")
        if (int(w), int(h)) in sizes:
            raise ValueError(f"{item.strip()} is listed twice")
        sizes.append((int(w), int(h)))
    if len(sizes) > MAX_WARM_SIZES:
        raise ValueError(f"at most {MAX_WARM_SIZES} sizes, got {len(sizes)}")
    return sizes


def silence_for(worker_lost_after_s: float, heartbeat_s: float) -> float:
    """The silence after which a worker counts as gone: one heartbeat period (how often a worker
    looks) less than worker_lost_after_s, so that its jobs are taken back within that time."""
    return worker_lost_after_s - heartbeat_s


DEFAULT_SILENCE_S = silence_for(
    WorkerSettings.model_fields["worker_lost_after_s"].default,
    WorkerSettings.model_fields["heartbeat_s"].default,
)
