"""The procedural scene set: one object on a plain background, 64×64, anti-aliased.

Everything here is deterministic: a scene is fully described by its attributes plus a small
jitter (sub-pixel offset and scale), and the dataset generator draws those from a seeded
numpy generator. The renderer and the analyser share the geometry constants below, so that
the analyser's thresholds sit halfway between what the renderer can produce.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]


class Shape(StrEnum):
    CIRCLE = "circle"
    SQUARE = "square"
    TRIANGLE = "triangle"  # isosceles, pointing up, base = height = the object's size


class Colour(StrEnum):
    RED = "red"
    ORANGE = "orange"
    YELLOW = "yellow"
    GREEN = "green"
    BLUE = "blue"
    PURPLE = "purple"


class Size(StrEnum):
    SMALL = "small"
    LARGE = "large"


class Position(StrEnum):
    CENTER = "center"
    TOP_LEFT = "top left"
    TOP_RIGHT = "top right"
    BOTTOM_LEFT = "bottom left"
    BOTTOM_RIGHT = "bottom right"


class Background(StrEnum):
    WHITE = "white"
    BLACK = "black"
    GRAY = "gray"


# Object palette. Chosen so that every colour is at least ~95 RGB units (Euclidean) from every
# other colour and from every background, which keeps nearest-palette classification and
# colour-distance segmentation unambiguous (the closest pairs are orange/yellow and
# purple/gray).
PALETTE: dict[Colour, RGB] = {
    Colour.RED: (215, 35, 35),
    Colour.ORANGE: (250, 130, 0),
    Colour.YELLOW: (245, 225, 25),
    Colour.GREEN: (40, 170, 60),
    Colour.BLUE: (40, 90, 220),
    Colour.PURPLE: (140, 50, 190),
}

BACKGROUNDS: dict[Background, RGB] = {
    Background.WHITE: (255, 255, 255),
    Background.BLACK: (0, 0, 0),
    Background.GRAY: (128, 128, 128),
}

IMAGE_SIZE = 64
SUPERSAMPLE = 4  # render at 4× and box-downsample: each output pixel holds its coverage

# Object size = side of the bounding box (circle diameter, square side, triangle base/height).
SIZE_PX: dict[Size, float] = {Size.SMALL: 14.0, Size.LARGE: 26.0}

# Anchor of each position (centre of the object's bounding box), in 64-pixel coordinates.
POSITION_XY: dict[Position, tuple[float, float]] = {
    Position.CENTER: (32.0, 32.0),
    Position.TOP_LEFT: (16.0, 16.0),
    Position.TOP_RIGHT: (48.0, 16.0),
    Position.BOTTOM_LEFT: (16.0, 48.0),
    Position.BOTTOM_RIGHT: (48.0, 48.0),
}

# Jitter drawn by the dataset generator. Small enough that a large object at a corner stays
# inside the frame and that the analyser's size/position thresholds keep a wide margin.
MAX_OFFSET_PX = 2.0
SCALE_RANGE = (0.92, 1.08)

# (shape, colour) pairs never shown in training; they measure compositional generalisation.
HELD_OUT: frozenset[tuple[Shape, Colour]] = frozenset(
    {
        (Shape.TRIANGLE, Colour.PURPLE),
        (Shape.CIRCLE, Colour.YELLOW),
        (Shape.SQUARE, Colour.GREEN),
    }
)

CANONICAL_TEMPLATE = "a {size} {colour} {shape} in the {position} on a {background} background"

# Paraphrases carry exactly the same five attributes; index 0 is the canonical caption.
CAPTION_TEMPLATES: tuple[str, ...] = (
    CANONICAL_TEMPLATE,
    "a {colour} {shape}, {size}, in the {position}, on a {background} background",
    "a {background} background with a {size} {colour} {shape} in the {position}",
    "{size} {colour} {shape} in the {position} of a {background} background",
    "a {size} {colour} {shape} placed in the {position}, {background} background",
)

# For training images whose object was redrawn in a colour outside the palette: the caption
# leaves the colour out rather than name it wrongly.
COLOURLESS_TEMPLATE = "a {size} {shape} in the {position} on a {background} background"


@dataclass(frozen=True)
class Scene:
    shape: Shape
    colour: Colour
    size: Size
    position: Position
    background: Background
    dx: float = 0.0  # offset of the object from its anchor, in 64-pixel units
    dy: float = 0.0
    scale: float = 1.0  # multiplies SIZE_PX

    @property
    def is_held_out(self) -> bool:
        return (self.shape, self.colour) in HELD_OUT

    def caption(self, template: int = 0) -> str:
        return caption(self, template)

    def canonical(self) -> Scene:
        """The same attributes without jitter."""
        return replace(self, dx=0.0, dy=0.0, scale=1.0)


def _fill(template: str, scene: Scene) -> str:
    """A template filled with the scene's attribute words (templates may leave some out)."""
    return template.format(
        size=scene.size.value,
        colour=scene.colour.value,
        shape=scene.shape.value,
        position=scene.position.value,
        background=scene.background.value,
    )


def caption(scene: Scene, template: int = 0) -> str:
    """Caption of a scene; ``template=0`` gives the canonical form."""
    return _fill(CAPTION_TEMPLATES[template], scene)


def colourless_caption(scene: Scene) -> str:
    return _fill(COLOURLESS_TEMPLATE, scene)


def all_scenes() -> Iterator[Scene]:
    """Every attribute combination once (540), without jitter, held-out pairs included."""
    for shape, colour, size, position, background in itertools.product(
        Shape, Colour, Size, Position, Background
    ):
        yield Scene(shape, colour, size, position, background)


def seen_scenes() -> list[Scene]:
    return [s for s in all_scenes() if not s.is_held_out]


def held_out_scenes() -> list[Scene]:
    return [s for s in all_scenes() if s.is_held_out]


def _outline(scene: Scene) -> tuple[float, float, float]:
    """Centre x, centre y and side of the object's bounding box in 64-pixel units."""
    cx, cy = POSITION_XY[scene.position]
    return cx + scene.dx, cy + scene.dy, SIZE_PX[scene.size] * scene.scale


def coverage(scene: Scene) -> np.ndarray:
    """Fraction of each pixel covered by the object, float32 (64, 64) in [0, 1]."""
    k = SUPERSAMPLE
    big = Image.new("L", (IMAGE_SIZE * k, IMAGE_SIZE * k), 0)
    draw = ImageDraw.Draw(big)
    cx, cy, side = (v * k for v in _outline(scene))
    half = side / 2
    # PIL treats the box corners as inclusive pixel indices, hence the -1 on the far side.
    box = (cx - half, cy - half, cx + half - 1, cy + half - 1)
    if scene.shape is Shape.CIRCLE:
        draw.ellipse(box, fill=255)
    elif scene.shape is Shape.SQUARE:
        draw.rectangle(box, fill=255)
    else:
        draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=255)
    small = big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render_with_coverage(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """RGB image (64, 64, 3) uint8 and the object coverage (64, 64) float32."""
    alpha = coverage(scene)[..., None]
    fg = np.asarray(PALETTE[scene.colour], dtype=np.float32)
    bg = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32)
    rgb = bg * (1.0 - alpha) + fg * alpha
    return np.rint(rgb).astype(np.uint8), alpha[..., 0]


def render(scene: Scene) -> np.ndarray:
    """RGB image (64, 64, 3) uint8."""
    return render_with_coverage(scene)[0]


def render_image(scene: Scene) -> Image.Image:
    return Image.fromarray(render(scene), mode="RGB")


def jitter(scene: Scene, rng: np.random.Generator) -> Scene:
    dx, dy = rng.uniform(-MAX_OFFSET_PX, MAX_OFFSET_PX, size=2)
    scale = rng.uniform(*SCALE_RANGE)
    return replace(scene, dx=float(dx), dy=float(dy), scale=float(scale))


def sample_scenes(
    n: int, seed: int, *, held_out: bool = False, with_jitter: bool = True
) -> list[Scene]:
    """``n`` scenes drawn uniformly from the seen (or, with ``held_out``, held-out) combos.

    Deterministic in ``seed``: the same arguments always give the same list.
    """
    rng = np.random.default_rng(seed)
    pool = held_out_scenes() if held_out else seen_scenes()
    picks = rng.integers(0, len(pool), size=n)
    scenes = [pool[int(i)] for i in picks]
    return [jitter(s, rng) for s in scenes] if with_jitter else scenes


@dataclass(frozen=True)
class SceneSet:
    """A rendered dataset: images, object coverage, the scenes and each one's caption template."""

    images: np.ndarray  # (N, 64, 64, 3) uint8
    coverage: np.ndarray  # (N, 64, 64) float32
    scenes: list[Scene]
    templates: np.ndarray  # (N,) int64, index into CAPTION_TEMPLATES

    def captions(self) -> list[str]:
        return [caption(s, int(t)) for s, t in zip(self.scenes, self.templates, strict=True)]


def make_scene_set(
    n: int, seed: int, *, held_out: bool = False, canonical_fraction: float = 0.6
) -> SceneSet:
    """Render ``n`` jittered scenes and pick a caption template for each.

    ``canonical_fraction`` of the captions use the canonical template (the form used by the
    evaluation and, presumably, most users); the rest are spread over the paraphrases.
    """
    scenes = sample_scenes(n, seed, held_out=held_out)
    # A separate stream so that changing the caption mix does not change the images.
    rng = np.random.default_rng([seed, 1])
    n_para = len(CAPTION_TEMPLATES) - 1
    templates = np.where(
        rng.random(n) < canonical_fraction, 0, 1 + rng.integers(0, n_para, size=n)
    ).astype(np.int64)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    cover = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i, scene in enumerate(scenes):
        images[i], cover[i] = render_with_coverage(scene)
    return SceneSet(images=images, coverage=cover, scenes=scenes, templates=templates)


def caption_corpus(scenes: Sequence[Scene] | None = None) -> list[str]:
    """Every caption template for every given scene (default: all seen combos)."""
    pool = seen_scenes() if scenes is None else scenes
    return [caption(s, t) for s in pool for t in range(len(CAPTION_TEMPLATES))]
