"""The warm StableDiffusion3Pipeline: loading it once, describing it, and running one job on it.

diffusers pipelines and schedulers are not thread-safe, so a process calls `generate` from one
thread only; scale out by running more worker processes.
"""

from __future__ import annotations

import functools
import math
import time
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
    default_max_pixels,
)
from worker import metrics
from worker.sd3_build import NO_T5_MAX_SEQUENCE_LENGTH
from worker.settings import BUNDLED, BUNDLED_MODEL_DIR, WorkerSettings

StepCallback = Callable[[int, int], None]
"""Called with (0, total) once the prompt is encoded and denoising starts, then after each
denoising step with (steps done, total); may raise to abort the job."""

# Square matrices the size of a small layer: big enough for the CPU's matrix kernels to show
# their speed, small enough that even emulated bfloat16 takes milliseconds.
_PROBE_SIDE = 256
_PROBE_RUNS = 5


def choose_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def choose_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_bfloat16_is_faster()):
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        requested
    ]


@functools.cache
def cpu_bfloat16_is_faster() -> bool:
    """Whether this CPU multiplies bfloat16 matrices faster than float32 ones; measured once.

    Where the CPU has bfloat16 instructions (AVX512-BF16, AMX) it does, and the weights take
    half the memory besides; elsewhere torch emulates bfloat16, several times slower.
    """

    def best_time(dtype: torch.dtype) -> float:
        a = torch.randn(_PROBE_SIDE, _PROBE_SIDE, dtype=dtype)
        b = torch.randn(_PROBE_SIDE, _PROBE_SIDE, dtype=dtype)
        torch.mm(a, b)  # the first call pays for choosing a kernel
        times = []
        for _ in range(_PROBE_RUNS):
            started = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - started)
        return min(times)  # the least disturbed by whatever else the machine runs

    return best_time(torch.bfloat16) < best_time(torch.float32)


def set_vae_tile(vae: Any, pixels: int) -> None:
    """Make the tiles the VAE decodes in, once tiling is enabled, squares of at most `pixels`.

    diffusers sizes them by the VAE's sample_size (1024 for SD3's, 32 for the tiny model's),
    which would make a threshold below 1024² tile nothing, and tile small models absurdly.
    """
    scale = 2 ** (len(vae.config.block_out_channels) - 1)  # image pixels per latent pixel
    latent_side = max(1, math.isqrt(pixels) // scale)
    vae.tile_latent_min_size = latent_side
    vae.tile_sample_min_size = latent_side * scale


def has_t5(model: str) -> bool:
    """Whether the folder (or hub id) has a T5 encoder; diffusers records one left out as null."""
    index = StableDiffusion3Pipeline.load_config(model)
    library, _ = index.get("text_encoder_3") or (None, None)
    return library is not None


def _synchronize(device: torch.device) -> None:
    # CUDA runs kernels asynchronously: without waiting, a timing would measure their launch.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        if settings.drop_t5 or not has_t5(model):
            extra = {"text_encoder_3": None, "tokenizer_3": None}
        pipe = StableDiffusion3Pipeline.from_pretrained(model, dtype=self.dtype, **extra)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        defaults = ServingDefaults.load(Path(model))
        # T5 and the joint attention both see the padding, so a model must be called with the
        # context length it was trained with.
        self.max_sequence_length = defaults.max_sequence_length or (
            PIPELINE_MAX_SEQUENCE_LENGTH
            if pipe.text_encoder_3 is not None
            else NO_T5_MAX_SEQUENCE_LENGTH
        )
        self.vae_tile_above = settings.vae_tile_above
        set_vae_tile(pipe.vae, settings.vae_tile_above)
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
            max_pixels=(
                default_max_pixels(default_side, default_side)
                if settings.max_pixels is None
                else settings.max_pixels
            ),
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
        return self._generate(params, on_step, observe=True)

    def _generate(
        self, params: GenerateParams, on_step: StepCallback | None, *, observe: bool
    ) -> list[Image]:
        generators = [
            torch.Generator(device="cpu").manual_seed(params.seed + k)
            for k in range(params.num_images)
        ]

        def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None:
                on_step(step + 1, params.steps)
            return kwargs

        if params.width * params.height > self.vae_tile_above:
            self.pipe.vae.enable_tiling()
        else:
            self.pipe.vae.disable_tiling()
        with torch.inference_mode():
            # Encoded here rather than inside the pipeline call, so that its time is measured
            # apart from the denoising steps'.
            started = time.perf_counter()
            embeds, negative_embeds, pooled, negative_pooled = self.pipe.encode_prompt(
                prompt=params.prompt,
                prompt_2=None,
                prompt_3=None,
                negative_prompt=params.negative_prompt,
                # The pipeline's own rule: guidance above 1 runs the negative prompt too.
                do_classifier_free_guidance=params.guidance_scale > 1,
                num_images_per_prompt=params.num_images,
                device=self.device,
                max_sequence_length=self.max_sequence_length,
            )
            _synchronize(self.device)
            if observe:
                metrics.PROMPT_ENCODE.labels(self.info.id).observe(time.perf_counter() - started)
            if on_step is not None:
                on_step(0, params.steps)
            out = self.pipe(
                prompt_embeds=embeds,
                negative_prompt_embeds=negative_embeds,
                pooled_prompt_embeds=pooled,
                negative_pooled_prompt_embeds=negative_pooled,
                width=params.width,
                height=params.height,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance_scale,
                # The embeddings hold one row per image already.
                num_images_per_prompt=1,
                generator=generators,
                callback_on_step_end=callback,
                output_type="pil",
            )
        images: list[Image] = out.images
        return images

    def warm_up(self) -> None:
        """One tiny generation, so the first real job does not pay for lazy initialisation."""
        info = self.info
        # Not a job: its slow first call stays out of the metrics.
        self._generate(
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
            ),
            None,
            observe=False,
        )
