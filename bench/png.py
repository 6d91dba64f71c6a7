"""The worker's two PNG encoders side by side: time on one core and size, in one run.

Encodes each picture with `fast` (SD3SERVE_PNG_ENCODER's default) and with `pillow` at this
checkout's level and strategy, alternating, and prints the median time of each, the sizes and
the ratios. The pictures: noise (what the bundled tiny model draws), a smooth synthetic one,
and any photos given with --image, each at its own size and resized to --sizes squares.

    .venv/bin/python bench/png.py [--runs 15] [--sizes 256,1024] [--image photo.jpg ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from common.contract import OutputFormat
from worker.encode import PngEncoder, encode
from worker.settings import DEFAULT_PNG

ENCODERS = {e: replace(DEFAULT_PNG, encoder=e) for e in PngEncoder}


def pictures(sizes: list[int], images: list[Path]) -> Iterator[tuple[str, Image.Image]]:
    rng = np.random.default_rng(0)
    for n in sizes:
        yield f"noise {n}²", Image.fromarray(rng.integers(0, 256, (n, n, 3), dtype=np.uint8))
        y, x = np.mgrid[0:n, 0:n] * (256 / n)
        smooth = np.stack([x, y, (x + y) / 2], axis=-1) + rng.normal(0, 2, (n, n, 3))
        yield f"smooth {n}²", Image.fromarray(smooth.clip(0, 255).astype(np.uint8))
    for path in images:
        photo = Image.open(path).convert("RGB")
        yield f"{path.name} {photo.width}x{photo.height}", photo
        for n in sizes:
            yield f"{path.name} {n}²", photo.resize((n, n), Image.Resampling.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--sizes", default="256,1024")
    parser.add_argument("--image", type=Path, action="append", default=[])
    args = parser.parse_args()
    recipe = {"prompt": "a lighthouse at dusk", "steps": 28, "seed": 1, "model": "sd3-medium"}
    print(f"fast against pillow (level {DEFAULT_PNG.level}, {DEFAULT_PNG.strategy}), one core:")
    print(
        f"  {'picture':24} {'fast':>9} {'pillow':>9} {'time':>6}   {'fast':>8} {'pillow':>8} size"
    )
    for name, picture in pictures([int(n) for n in args.sizes.split(",")], args.image):
        took: dict[PngEncoder, list[float]] = {e: [] for e in PngEncoder}
        size = {}
        for _ in range(args.runs):
            for encoder, options in ENCODERS.items():
                started = time.perf_counter()
                data = encode(picture, OutputFormat.png, recipe, png=options)
                took[encoder].append(time.perf_counter() - started)
                size[encoder] = len(data)
        fast, pil = (statistics.median(took[e]) * 1e3 for e in (PngEncoder.fast, PngEncoder.pillow))
        kb = {e: size[e] / 1e3 for e in PngEncoder}
        print(
            f"  {name:24} {fast:6.2f} ms {pil:6.2f} ms {pil / fast:5.1f}×"
            f"   {kb[PngEncoder.fast]:5.0f} KB {kb[PngEncoder.pillow]:5.0f} KB"
            f" {size[PngEncoder.fast] / size[PngEncoder.pillow]:5.2f}×"
        )


if __name__ == "__main__":
    main()
