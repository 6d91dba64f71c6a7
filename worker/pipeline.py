"""The warm StableDiffusion3Pipeline: loading it once, describing it, and running one job on it.

diffusers pipelines and schedulers are not thread-safe, so a process calls `generate` from one
thread only; scale out by running more worker processes.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
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
from common.settings import SettingsError, env_var
from worker import accel, metrics
from worker.batch import batch_key
from worker.prompt_cache import PromptCache, PromptEmbeddings, concat
from worker.sd3_build import NO_T5_MAX_SEQUENCE_LENGTH
from worker.settings import BUNDLED, BUNDLED_MODEL_DIR, WorkerSettings

log = logging.getLogger("sd3serve.worker")

StepCallback = Callable[[int, int], None]
"""Called with (0, total) once the prompt is encoded and denoising starts, then after each
denoising step with (steps done, total); may raise to abort the job."""

BatchStepCallback = Callable[[int, int], Collection[int]]
"""A batch's StepCallback: also returns the indices of the jobs to drop from the batch from this
step on (canceled, or no longer this worker's); what it returns at step 0 is not looked at."""


class BatchEmptied(Exception):
    """The step callback dropped every job of the batch: the pipeline call is abandoned."""


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


class _Rows:
    """Which rows of a batched pipeline call are whose, as jobs leave the batch midway.

    A job that leaves takes its rows out of the latents and the text embeddings the pipeline
    carries into the next step (the tensors diffusers lets a step callback replace), so the
    jobs that stay no longer pay for its denoising, and its images are never decoded.
    """

    TENSORS = ("latents", "prompt_embeds", "pooled_prompt_embeds")

    def __init__(self, counts: Sequence[int], cfg: bool) -> None:
        self.counts = counts
        # With guidance the embeddings hold every negative row, then every positive one.
        self.cfg = cfg
        self.live = list(range(len(counts)))

    def drop(self, jobs: Collection[int], tensors: dict[str, Any]) -> dict[str, Any]:
        gone = set(jobs).intersection(self.live)
        if not gone:
            return tensors
        keep = [j for j in self.live if j not in gone]
        if not keep:
            raise BatchEmptied()
        rows: list[int] = []
        offset = 0
        for j in self.live:
            if j not in gone:
                rows.extend(range(offset, offset + self.counts[j]))
            offset += self.counts[j]
        self.live = keep
        index = torch.tensor(rows, device=tensors["latents"].device)
        text_index = torch.cat([index, index + offset]) if self.cfg else index
        return {
            "latents": tensors["latents"].index_select(0, index),
            "prompt_embeds": tensors["prompt_embeds"].index_select(0, text_index),
            "pooled_prompt_embeds": tensors["pooled_prompt_embeds"].index_select(0, text_index),
        }

    def split(self, images: list[Image]) -> list[list[Image] | None]:
        """The call's images (the rows left at its end), handed back to their jobs."""
        out: list[list[Image] | None] = [None] * len(self.counts)
        at = 0
        for j in self.live:
            out[j] = images[at : at + self.counts[j]]
            at += self.counts[j]
        return out


class WarmPipeline:
    """One loaded pipeline plus what clients need to know about it."""

    def __init__(self, settings: WorkerSettings) -> None:
        model = resolve_model(settings)
        self.device = choose_device(settings.torch_device)
        self.dtype = choose_dtype(settings.torch_dtype, self.device)
        accel.check_device(settings, self.device)
        extra: dict[str, Any] = {}
        if settings.drop_t5 or not has_t5(model):
            if settings.t5_8bit:
                raise SettingsError(f"{env_var('t5_8bit')}: {model} has no T5 encoder")
            extra = {"text_encoder_3": None, "tokenizer_3": None}
        elif settings.t5_8bit:
            extra = {"text_encoder_3": accel.t5_8bit(model, self.device, self.dtype)}
        pipe = StableDiffusion3Pipeline.from_pretrained(model, dtype=self.dtype, **extra)
        pipe.set_progress_bar_config(disable=True)
        self.router = accel.prepare(pipe, settings, self.device)
        self.pipe = pipe
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
        self.prompts = PromptCache(
            pipe,
            device=self.device,
            max_sequence_length=self.max_sequence_length,
            model=self.info.id,
            maxsize=settings.prompt_cache_size,
        )
        self.warm_sizes = accel.warm_sizes(settings, self.info)

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
        step_callback: BatchStepCallback | None = None
        if on_step is not None:
            report = on_step

            def step_callback(step: int, total: int) -> Collection[int]:
                report(step, total)
                return ()

        (images,) = self._generate([params], step_callback, observe=True)
        if images is None:  # only a callback that drops a job empties the batch
            raise RuntimeError("the job was dropped from its own batch")
        return images

    def generate_batch(
        self, jobs: Sequence[GenerateParams], on_step: BatchStepCallback | None = None
    ) -> list[list[Image] | None]:
        """Run compatible jobs (one `batch_key`) as one pipeline call: each job's images, None
        for a job the callback dropped. Each image is drawn from its own job's seeds exactly as
        if the job ran alone, so it matches that run up to the arithmetic of a larger batch."""
        return self._generate(jobs, on_step, observe=True)

    def _generate(
        self,
        jobs: Sequence[GenerateParams],
        on_step: BatchStepCallback | None,
        *,
        observe: bool,
    ) -> list[list[Image] | None]:
        first = jobs[0]
        if any(batch_key(p) != batch_key(first) for p in jobs):
            raise ValueError("jobs of one pipeline call must share model, size, steps, guidance")
        generators = [
            torch.Generator(device="cpu").manual_seed(p.seed + k)
            for p in jobs
            for k in range(p.num_images)
        ]
        # The pipeline's own rule: guidance above 1 runs the negative prompt too.
        cfg = first.guidance_scale > 1
        batch = _Rows([p.num_images for p in jobs], cfg)

        def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is None:
                return kwargs
            return batch.drop(on_step(step + 1, first.steps), kwargs)

        if first.width * first.height > self.vae_tile_above:
            self.pipe.vae.enable_tiling()
        else:
            self.pipe.vae.disable_tiling()
        with torch.inference_mode():
            # Encoded here rather than inside the pipeline call, so that its time is measured
            # apart from the denoising steps'.
            started = time.perf_counter()
            embeds, negative_embeds, pooled, negative_pooled = concat(
                [self._encode_prompt(p, cfg) for p in jobs]
            )
            _synchronize(self.device)
            if observe:
                metrics.PROMPT_ENCODE.labels(self.info.id).observe(time.perf_counter() - started)
            if on_step is not None:
                on_step(0, first.steps)
            out = self.pipe(
                prompt_embeds=embeds,
                negative_prompt_embeds=negative_embeds,
                pooled_prompt_embeds=pooled,
                negative_pooled_prompt_embeds=negative_pooled,
                width=first.width,
                height=first.height,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance_scale,
                # The embeddings hold one row per image already.
                num_images_per_prompt=1,
                generator=generators,
                callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=list(_Rows.TENSORS),
                output_type="pil",
            )
        return batch.split(out.images)

    def _encode_prompt(self, params: GenerateParams, cfg: bool) -> PromptEmbeddings:
        """The job's prompt embeddings, one row per image; the negatives None without guidance."""
        return self.prompts.encode(params.prompt, params.negative_prompt, do_cfg=cfg).repeat(
            params.num_images
        )

    def warm_up(self) -> None:
        """A 2-step generation at each warm size, so that no job pays for lazy initialisation,
        nor, with SD3SERVE_COMPILE, for compiling the transformer for its size."""
        info = self.info
        for width, height in self.warm_sizes:
            started = time.perf_counter()
            # Not a job: its slow first call stays out of the metrics.
            with self.router.warming():
                self._generate(
                    [
                        GenerateParams(
                            model=info.id,
                            prompt="warm-up",
                            negative_prompt="",
                            width=width,
                            height=height,
                            steps=2,
                            guidance_scale=info.default_guidance_scale,
                            seed=0,
                            num_images=1,
                            output_format=OutputFormat.png,
                        )
                    ],
                    None,
                    observe=False,
                )
            compiled = " (transformer compiled)" if self.router.compiled is not None else ""
            log.info(
                "warmed up at %dx%d in %.1f s%s",
                width,
                height,
                time.perf_counter() - started,
                compiled,
            )
