"""Turning a generated image into the bytes a client downloads."""

from __future__ import annotations

import io
import json
import zlib
from dataclasses import dataclass
from enum import StrEnum

from PIL.Image import Image
from PIL.PngImagePlugin import PngInfo

from common.contract import GenerateParams, OutputFormat

JPEG_QUALITY = 95
WEBP_QUALITY = 90


class PngStrategy(StrEnum):
    """zlib's strategy for a PNG's filtered rows."""

    rle = "rle"
    default = "default"
    filtered = "filtered"
    huffman = "huffman"


_ZLIB_STRATEGY = {
    PngStrategy.rle: zlib.Z_RLE,
    PngStrategy.default: zlib.Z_DEFAULT_STRATEGY,
    PngStrategy.filtered: zlib.Z_FILTERED,
    PngStrategy.huffman: zlib.Z_HUFFMAN_ONLY,
}


@dataclass(frozen=True)
class PngOptions:
    level: int
    strategy: PngStrategy


def image_parameters(params: GenerateParams, index: int) -> dict[str, object]:
    """The parameters that reproduce image `index` on its own (its seed is seed + index)."""
    return {
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "width": params.width,
        "height": params.height,
        "steps": params.steps,
        "guidance_scale": params.guidance_scale,
        "seed": params.seed + index,
        "model": params.model,
    }


def encode(
    image: Image, fmt: OutputFormat, parameters: dict[str, object], *, png: PngOptions
) -> bytes:
    """The image in `fmt`; a PNG compressed as `png` says."""
    buf = io.BytesIO()
    if fmt is OutputFormat.png:
        # Text chunks keep the recipe with the picture, as other SD front ends do.
        info = PngInfo()
        info.add_text("parameters", json.dumps(parameters, sort_keys=True))
        info.add_text("Software", "sd3-serve")
        image.save(
            buf,
            format="PNG",
            pnginfo=info,
            compress_level=png.level,
            compress_type=_ZLIB_STRATEGY[png.strategy],
        )
    elif fmt is OutputFormat.jpeg:
        image.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buf, format="WEBP", quality=WEBP_QUALITY)
    return buf.getvalue()
