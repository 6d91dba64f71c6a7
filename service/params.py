"""Resolving a request against the served model: its size rules and its defaults."""

from __future__ import annotations

import re
import secrets

from common.contract import MAX_SEED, GenerateParams, GenerateRequest, ModelInfo
from service.errors import InvalidParameter


def _check_side(name: str, value: int, info: ModelInfo) -> None:
    if value % info.size_multiple:
        lower = value - value % info.size_multiple
        raise InvalidParameter(
            f"{name} must be a multiple of {info.size_multiple} (the model's VAE scale factor "
            f"times its patch size); got {value}, try {max(lower, info.min_size)} or "
            f"{lower + info.size_multiple}",
            field=name,
        )
    if not info.min_size <= value <= info.max_size:
        raise InvalidParameter(
            f"{name} must be between {info.min_size} and {info.max_size} for model "
            f"{info.id!r}; got {value}",
            field=name,
        )


def _check_pixels(width: int, height: int, num_images: int, info: ModelInfo) -> None:
    image = width * height
    if image * num_images <= info.max_pixels:
        return
    budget = (
        f"model {info.id!r} makes at most {info.max_pixels:,} pixels per job (width × height × "
        "num_images: its max_pixels in GET /v1/models)"
    )
    if image <= info.max_pixels:
        raise InvalidParameter(
            f"{num_images} images of {width}×{height} are {image * num_images:,} pixels, and "
            f"{budget}: ask for at most {info.max_pixels // image} at this size",
            field="num_images",
        )
    raise InvalidParameter(
        f"one {width}×{height} image is {image:,} pixels, and {budget}: ask for a smaller size",
        field="width",
    )


def resolve(request: GenerateRequest, info: ModelInfo) -> GenerateParams:
    width = request.width if request.width is not None else info.default_width
    height = request.height if request.height is not None else info.default_height
    _check_side("width", width, info)
    _check_side("height", height, info)
    _check_pixels(width, height, request.num_images, info)
    return GenerateParams(
        model=info.id,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=width,
        height=height,
        steps=request.steps if request.steps is not None else info.default_steps,
        guidance_scale=(
            request.guidance_scale
            if request.guidance_scale is not None
            else info.default_guidance_scale
        ),
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        num_images=request.num_images,
        output_format=request.output_format,
    )


# ASCII digits only: str.isdigit() passes superscripts, which int() then refuses; int() reads
# other scripts' digits and refuses over 4300 of them. Leading zeros go before any conversion.
_SECONDS = re.compile(r"0*([0-9]{1,9})")


def parse_prefer_wait(header: str | None, limit_s: int) -> int | None:
    """The `wait` preference of an RFC 7240 Prefer header, in seconds; other preferences pass."""
    if not header:
        return None
    for preference in header.split(","):
        token = preference.split(";")[0].strip()
        name, _, value = token.partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        seconds = _SECONDS.fullmatch(value)
        if seconds is None or int(seconds[1]) > limit_s:
            raise InvalidParameter(
                f"Prefer: wait must be whole seconds from 0 to {limit_s}; got {value[:20]!r}",
                field="prefer",
            )
        return int(seconds[1])
    return None
