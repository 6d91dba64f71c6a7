"""Resolving a request against the served model: its size rules and its defaults."""

from __future__ import annotations

import re
import secrets

from common.contract import MAX_SEED, GenerateParams, GenerateRequest, ModelInfo
from service.errors import InvalidParameter


def resolve(request: GenerateRequest, info: ModelInfo) -> GenerateParams:
    width = request.width if request.width is not None else info.default_width
    height = request.height if request.height is not None else info.default_height
    if (refusal := info.size_refusal(width, height, request.num_images)) is not None:
        field, message = refusal
        raise InvalidParameter(message, field=field)
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
