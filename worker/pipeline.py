"""The warm StableDiffusion3Pipeline: loading it once, describing it, and running one job on it.

diffusers pipelines and schedulers are not thread-safe, so a process calls `generate` from one
thread only; scale out by running more worker processes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusion3Pipeline
from PIL.Image import Image

from common.contract import (
    PIPELINE_MAX_SEQUENCE_LENGTH,
    GenerateParams,
    ModelInfo,
    OutputFormat,
    ServingDefaults,
)
from worker.settings import BUNDLED, BUNDLED_MODEL_DIR, WorkerSettings

StepCallback = Callable[[int, int], None]
"""Called after each denoising step with (steps done, total); may raise to abort the job."""


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def choose_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        requested
    ]


def resolve_model(settings: WorkerSettings) -> str:
    """The path or hub id to load."""
    if settings.model == BUNDLED and not (BUNDLED_MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the bundled model is missing from {BUNDLED_MODEL_DIR}; reinstall sd3-serve or "
            "set SD3SERVE_MODEL to a diffusers folder"
        )
    return settings.model_path


class WarmPipeline:
    """One loaded pipeline plus what clients need to know about it."""

    def __init__(self, settings: WorkerSettings) -> None:
        model = resolve_model(settings)
        self.device = choose_device(settings.torch_device)
        self.dtype = choose_dtype(settings.torch_dtype, self.device)
        extra: dict[str, Any] = {}
        if settings.drop_t5:
            extra = {"text_encoder_3": None, "tokenizer_3": None}
        pipe = StableDiffusion3Pipeline.from_pretrained(model, dtype=self.dtype, **extra)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        defaults = ServingDefaults.load(Path(model))
        # T5 and the joint attention both see the padding, so a model must be called with the
        # context length it was trained with.
        self.max_sequence_length = defaults.max_sequence_length or PIPELINE_MAX_SEQUENCE_LENGTH
        self.info = self._describe(settings, defaults)

    def _describe(self, settings: WorkerSettings, defaults: ServingDefaults) -> ModelInfo:
        pipe = self.pipe
        config = pipe.transformer.config
        multiple = pipe.vae_scale_factor * config.patch_size
        default_side = config.sample_size * pipe.vae_scale_factor
        # The positional-embedding grid bounds the largest image the transformer can place.
        grid = config.pos_embed_max_size or config.sample_size // config.patch_size
        max_side = grid * config.patch_size * pipe.vae_scale_factor
        min_side = max(64, multiple)
        encoders = [
            type(enc).__name__
            for enc in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3)
            if enc is not None
        ]
        return ModelInfo(
            id=settings.served_name,
            source=settings.model,
            pipeline=type(pipe).__name__,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            size_multiple=multiple,
            min_size=min_side,
            max_size=max_side,
            default_width=default_side,
            default_height=default_side,
            default_steps=defaults.default_steps or settings.default_steps,
            default_guidance_scale=(
                settings.default_guidance_scale
                if defaults.default_guidance_scale is None
                else defaults.default_guidance_scale
            ),
            scheduler=type(pipe.scheduler).__name__,
            scheduler_shift=float(pipe.scheduler.config.get("shift", 1.0)),
            text_encoders=encoders,
        )

    def generate(self, params: GenerateParams, on_step: StepCallback | None = None) -> list[Image]:
        """Run one job. Image k uses seed + k, drawn on the CPU so seeds agree across devices."""
        generators = [
            torch.Generator(device="cpu").manual_seed(params.seed + k)
            for k in range(params.num_images)
        ]

        def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, params.steps)
            return kwargs

        with torch.inference_mode():
            out = self.pipe(
                prompt=params.prompt,
                negative_prompt=params.negative_prompt,
                width=params.width,
                height=params.height,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance_scale,
                num_images_per_prompt=params.num_images,
                generator=generators,
                max_sequence_length=self.max_sequence_length,
                callback_on_step_end=callback,
                output_type="pil",
            )
        images: list[Image] = out.images
        return images

    def warm_up(self) -> None:
        """One tiny generation, so the first real job does not pay for lazy initialisation."""
        info = self.info
        self.generate(
            GenerateParams(
                model=info.id,
                prompt="warm-up",
                negative_prompt="",
                width=info.min_size,
                height=info.min_size,
                steps=2,
                guidance_scale=info.default_guidance_scale,
                seed=0,
                num_images=1,
                output_format=OutputFormat.png,
            )
        )
