"""Deterministic, model-free reading of a scene image's attributes.

Pipeline: take the background colour from the image border, estimate each pixel's object
coverage by projecting its colour onto the background→object colour line, keep the largest
connected blob, and read

- colour: nearest palette entry to the blob's core colour;
- shape: fill ratio of the blob's bounding box (square ≈ 1, circle ≈ π/4 ≈ 0.79,
  triangle ≈ 0.5), thresholds halfway between;
- size: side of the bounding box (sqrt of its area), threshold at the geometric mean of the
  small and large sides;
- position: coverage-weighted centroid, nearest position anchor.

Coverage rather than a hard mask makes area and extent sub-pixel accurate on anti-aliased
edges, which matters for the fill ratio of a small object. All lengths are measured as
fractions of the image width, so other resolutions than 64×64 work too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from training.scenes import (
    BACKGROUNDS,
    IMAGE_SIZE,
    PALETTE,
    POSITION_XY,
    SIZE_PX,
    Background,
    Colour,
    Position,
    Shape,
    Size,
)

K = TypeVar("K")

# A pixel further than this (RGB units) from the background may belong to the object.
MIN_CONTRAST = 40.0
# The object's core colour is the median of pixels at least this fraction as far from the
# background as the object's typical (90th-percentile) pixel: interior, not anti-aliased edges.
CORE_FRACTION = 0.8
# Fill-ratio thresholds, halfway between the ideal values 1, π/4 and 1/2.
SQUARE_MIN_FILL = (1.0 + np.pi / 4) / 2
CIRCLE_MIN_FILL = (np.pi / 4 + 0.5) / 2
# Bounding-box side (fraction of the width) separating small from large.
LARGE_MIN_SIDE = float(np.sqrt(SIZE_PX[Size.SMALL] * SIZE_PX[Size.LARGE])) / IMAGE_SIZE


ATTRIBUTES = ("colour", "shape", "size", "position", "background")  # fields of Analysis


@dataclass(frozen=True)
class Analysis:
    """Attributes read from an image; the object fields are None when no object was found."""

    background: Background
    colour: Colour | None
    shape: Shape | None
    size: Size | None
    position: Position | None
    # Measurements behind the decisions, for debugging and reports.
    fill: float
    side: float  # bounding-box side as a fraction of the width
    centroid: tuple[float, float]  # (x, y) as fractions of width and height
    object_rgb: tuple[float, float, float]

    def attributes(self) -> dict[str, str | None]:
        """The read attributes by name (``ATTRIBUTES``), as strings; None where unread."""
        values = {attr: getattr(self, attr) for attr in ATTRIBUTES}
        return {attr: None if v is None else str(v) for attr, v in values.items()}


def _as_array(image: np.ndarray | Image.Image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        # Floats in [0, 1] (e.g. a pipeline's numpy output) are scaled to 0..255.
        arr = np.clip(np.asarray(arr, dtype=np.float64), 0.0, 1.0) * 255.0
    return np.asarray(arr, dtype=np.float64)


def _nearest(rgb: np.ndarray, table: Mapping[K, tuple[int, int, int]]) -> K:
    names = list(table)
    colours = np.asarray([table[n] for n in names], dtype=np.float64)
    return names[int(np.argmin(np.linalg.norm(colours - rgb, axis=1)))]


def _border_median(img: np.ndarray) -> np.ndarray:
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    return np.asarray(np.median(border, axis=0), dtype=np.float64)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected region of a boolean mask (pure numpy label propagation)."""
    h, w = mask.shape
    big = h * w
    labels = np.where(mask, np.arange(big).reshape(h, w), big)
    # Each pass moves the minimum label one pixel further; stops when nothing changes.
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce(
            [
                padded[1:-1, 1:-1],
                padded[:-2, 1:-1],
                padded[2:, 1:-1],
                padded[1:-1, :-2],
                padded[1:-1, 2:],
            ]
        )
        updated = np.where(mask, neighbours, big)
        if np.array_equal(updated, labels):
            break
        labels = updated
    ids, counts = np.unique(labels[mask], return_counts=True)
    if ids.size == 0:
        return np.zeros_like(mask)
    return np.asarray(labels == ids[int(np.argmax(counts))])


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3×3 dilation, so that the anti-aliased rim of a blob is counted with it."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy : dy + h, dx : dx + w]
    return out


def analyse(image: np.ndarray | Image.Image) -> Analysis:
    """Read background, colour, shape, size and position from an RGB image."""
    img = _as_array(image)
    h, w, _ = img.shape
    bg = _border_median(img)
    background = _nearest(bg, BACKGROUNDS)
    dist = np.linalg.norm(img - bg, axis=2)
    empty = Analysis(background, None, None, None, None, 0.0, 0.0, (0.0, 0.0), (0.0, 0.0, 0.0))
    if dist.max() < MIN_CONTRAST:
        return empty

    # A high percentile rather than the maximum, so that a few stray pixels in a generated
    # image cannot pose as the object's core.
    reference = float(np.percentile(dist[dist >= MIN_CONTRAST], 90))
    core = dist >= CORE_FRACTION * reference
    obj = np.median(img[core], axis=0)
    axis = obj - bg
    alpha = np.clip((img - bg) @ axis / float(axis @ axis), 0.0, 1.0)

    blob = largest_component(alpha >= 0.5)
    if not blob.any():
        return empty
    alpha = alpha * _dilate(blob)

    area = float(alpha.sum())
    # Extent along an axis = sum of the per-column (per-row) maximum coverage: exact for
    # axis-aligned edges and within a fraction of a pixel for curved ones.
    ext_x = float(alpha.max(axis=0).sum())
    ext_y = float(alpha.max(axis=1).sum())
    fill = area / (ext_x * ext_y)
    side = float(np.sqrt(ext_x * ext_y)) / w
    ys, xs = np.mgrid[0:h, 0:w]
    cx = float((alpha * (xs + 0.5)).sum() / area) / w
    cy = float((alpha * (ys + 0.5)).sum() / area) / h

    if fill >= SQUARE_MIN_FILL:
        shape = Shape.SQUARE
    elif fill >= CIRCLE_MIN_FILL:
        shape = Shape.CIRCLE
    else:
        shape = Shape.TRIANGLE
    size = Size.LARGE if side >= LARGE_MIN_SIDE else Size.SMALL
    position = min(
        Position,
        key=lambda p: (
            (POSITION_XY[p][0] / IMAGE_SIZE - cx) ** 2 + (POSITION_XY[p][1] / IMAGE_SIZE - cy) ** 2
        ),
    )
    colour = _nearest(obj, PALETTE)
    return Analysis(
        background=background,
        colour=colour,
        shape=shape,
        size=size,
        position=position,
        fill=fill,
        side=side,
        centroid=(cx, cy),
        object_rgb=(float(obj[0]), float(obj[1]), float(obj[2])),
    )
