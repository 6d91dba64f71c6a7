"""A public SD3 checkpoint's exact architecture with random weights, built without a download.

`build` writes a diffusers folder shaped like stabilityai's SD3 Medium, SD3.5 Medium or SD3.5
Large: every component from its published config (`worker/archs`), so every weight has its real
shape and the folder its real size, filled with random bfloat16 weights. It loads and serves
like the real checkpoint, which makes load time, memory and speed measurable where the real
weights cannot be fetched; its images are noise.

The tokenizers are the tiny model's (no vocabulary is downloaded either). Their ids lie within
the real vocabularies, so the text encoders keep their real embedding tables; and their end
token has the highest id, so CLIP, configured as published to pool at the highest id, pools at
the end of the prompt as it does with the real tokenizer.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from common.contract import PIPELINE_MAX_SEQUENCE_LENGTH, ServingDefaults
from worker import archs, sd3_build, tiny_model

# The dtype Stability publishes SD3.5 in; half the size of float32 on disk and in memory.
WEIGHT_DTYPE = torch.bfloat16
# Bounds the extra memory of writing a model: each shard is copied once on its way to disk.
MAX_SHARD_SIZE = "2GB"
_SEED_OFFSET = {
    "transformer": sd3_build.SEED_OFFSETS["transformer"],
    "vae": sd3_build.SEED_OFFSETS["vae"],
    "text_encoder": sd3_build.SEED_OFFSETS["clip_l"],
    "text_encoder_2": sd3_build.SEED_OFFSETS["clip_g"],
    "text_encoder_3": sd3_build.SEED_OFFSETS["t5"],
}


def build_model(arch: str, component: str) -> Any:
    """`component` of `arch` as its class constructs it, on torch's current default device and
    dtype (under ``torch.device("meta")``: its shapes only, no memory)."""
    folder = archs.config_dir(arch, component)
    model: Any  # one of the four model classes, all untyped
    if component == "transformer":
        model = SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(folder))
    elif component == "vae":
        model = AutoencoderKL.from_config(AutoencoderKL.load_config(folder))
    elif component in ("text_encoder", "text_encoder_2"):
        model = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder))
    elif component == "text_encoder_3":
        model = T5EncoderModel(T5Config.from_pretrained(folder))
    else:
        raise ValueError(f"unknown component {component!r}; choose from {', '.join(archs.MODELS)}")
    return model


def serving_defaults(arch: str, *, t5: bool) -> ServingDefaults:
    """The model card's steps and guidance, and the T5 context the folder is to be called with."""
    defaults = ServingDefaults.load(archs.CONFIGS / arch)
    length = PIPELINE_MAX_SEQUENCE_LENGTH if t5 else sd3_build.NO_T5_MAX_SEQUENCE_LENGTH
    return defaults.model_copy(update={"max_sequence_length": length})


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    # Constructed in float32 and cast afterwards, T5-XXL alone would take 19 GB on the way.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(arch: str, out: Path, *, t5: bool = True, seed: int = 0) -> Path:
    """Write `arch` with random weights to `out` (a diffusers folder) and return the path.

    One component at a time, so the peak memory is the largest component plus a shard: about
    12 GB with T5-XXL, 6 GB without it for the Mediums, 18 GB for SD3.5 Large's transformer.
    ``t5=False`` leaves the T5 encoder out, as a folder without `text_encoder_3`.
    """
    out.mkdir(parents=True, exist_ok=True)
    for component in archs.MODELS:
        if component == "text_encoder_3" and not t5:
            continue
        torch.manual_seed(seed + _SEED_OFFSET[component])
        with _default_dtype(WEIGHT_DTYPE):
            model = build_model(arch, component)
        # Buffers computed in float32 whatever the default (the positional embedding) follow.
        model.to(WEIGHT_DTYPE).eval()
        model.save_pretrained(out / component, max_shard_size=MAX_SHARD_SIZE)
        del model
        gc.collect()

    clip = tiny_model.clip_tokenizer()
    clip.save_pretrained(out / "tokenizer")
    clip.save_pretrained(out / "tokenizer_2")
    if t5:
        tiny_model.t5_tokenizer().save_pretrained(out / "tokenizer_3")
    shared = archs.CONFIGS / archs.SHARED
    scheduler = FlowMatchEulerDiscreteScheduler.load_config(shared / "scheduler")
    FlowMatchEulerDiscreteScheduler.from_config(scheduler).save_pretrained(out / "scheduler")

    index: dict[str, Any] = json.loads((shared / "model_index.json").read_text())
    if not t5:
        # How diffusers records a component left out; loading then needs it passed as None.
        index["text_encoder_3"] = index["tokenizer_3"] = [None, None]
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    serving_defaults(arch, t5=t5).save(out)
    return out
