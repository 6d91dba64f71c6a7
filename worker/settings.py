"""Worker settings, read from the environment once at start; bad values stop the worker."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field, field_validator

from common.settings import CommonSettings

BUNDLED = "bundled"

# SD3's ~1 megapixel aspect-ratio buckets, the square sizes people ask for, and the small sizes
# the bundled model serves. Anything else is labelled "other" to keep metric labels bounded.
DEFAULT_RESOLUTIONS = (
    "1024x1024,1152x896,896x1152,1216x832,832x1216,1344x768,768x1344,1536x640,640x1536,"
    "512x512,768x768,64x64,128x128,256x256"
)


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
    torch_device: str = Field(
        default="auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$",
        description="auto: CUDA if present.",
    )
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: bfloat16 on CUDA, float32 elsewhere."
    )
    drop_t5: bool = Field(default=False, description="Skip the T5 encoder to save memory.")
    default_steps: int = Field(
        default=28, ge=1, le=100, description="Steps when neither request nor model sets them."
    )
    default_guidance_scale: float = Field(
        default=7.0, ge=0, le=20, description="Guidance when neither request nor model sets it."
    )
    warmup: bool = Field(default=True, description="Run one small generation before serving.")
    metrics_host: str = Field(default="0.0.0.0", description="Address of /metrics and /healthz.")
    metrics_port: int = Field(default=9400, ge=0, le=65535, description="0 picks a free port.")
    metrics_resolutions: str = Field(
        default=DEFAULT_RESOLUTIONS, description="Comma-separated WxH labels kept in metrics."
    )
    heartbeat_s: float = Field(default=5.0, gt=0, le=60, description="Heartbeat period.")
    job_heartbeat_s: int = Field(
        default=120,
        ge=2,
        description=(
            "A running job whose worker has not reported a step for this long is taken for "
            "abandoned and re-queued (once) by another worker."
        ),
    )
    maintenance_interval_s: int = Field(
        default=60, ge=1, description="How often a worker looks for abandoned jobs."
    )
    worker_name: str = Field(default_factory=_default_worker_name, min_length=1)
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch.")

    @field_validator("metrics_resolutions")
    @classmethod
    def _check_resolutions(cls, value: str) -> str:
        for item in value.split(","):
            w, sep, h = item.strip().partition("x")
            if not (sep and w.isdigit() and h.isdigit()):
                raise ValueError(f"expected WxH entries like 1024x1024, got {item!r}")
        return value

    def resolution_labels(self) -> frozenset[str]:
        return frozenset(item.strip() for item in self.metrics_resolutions.split(","))
