"""The analyser must read back every attribute of rendered scenes (pure numpy/PIL, fast)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from training.analyser import analyse, largest_component
from training.scenes import (
    BACKGROUNDS,
    CAPTION_TEMPLATES,
    HELD_OUT,
    MAX_OFFSET_PX,
    PALETTE,
    SCALE_RANGE,
    SIZE_PX,
    Background,
    Colour,
    Position,
    Scene,
    Shape,
    Size,
    all_scenes,
    caption,
    caption_corpus,
    held_out_scenes,
    make_scene_set,
    render,
    render_with_coverage,
    sample_scenes,
    seen_scenes,
)


def expected(scene: Scene) -> dict[str, str | None]:
    return {
        "colour": scene.colour.value,
        "shape": scene.shape.value,
        "size": scene.size.value,
        "position": scene.position.value,
        "background": scene.background.value,
    }


@pytest.mark.parametrize(
    ("shape", "colour"), list(itertools.product(Shape, Colour)), ids=lambda v: str(v)
)
def test_analyser_recovers_every_combination(shape: Shape, colour: Colour) -> None:
    # 30 scenes per case: every size × position × background for this shape and colour.
    for size, position, background in itertools.product(Size, Position, Background):
        scene = Scene(shape, colour, size, position, background)
        assert analyse(render(scene)).attributes() == expected(scene), scene


# The extreme jitter corners: the thresholds must hold over the whole range the generator uses.
EXTREMES = [
    (dx, dy, scale)
    for dx in (-MAX_OFFSET_PX, MAX_OFFSET_PX)
    for dy in (-MAX_OFFSET_PX, MAX_OFFSET_PX)
    for scale in SCALE_RANGE
]


@pytest.mark.parametrize("shape", list(Shape), ids=str)
@pytest.mark.parametrize("size", list(Size), ids=str)
def test_analyser_holds_at_jitter_extremes(shape: Shape, size: Size) -> None:
    for position, (dx, dy, scale) in itertools.product(Position, EXTREMES):
        scene = Scene(shape, Colour.PURPLE, size, position, Background.GRAY, dx, dy, scale)
        assert analyse(render(scene)).attributes() == expected(scene), scene


def test_analyser_on_sampled_dataset() -> None:
    scenes = sample_scenes(200, seed=123) + sample_scenes(40, seed=7, held_out=True)
    for scene in scenes:
        assert analyse(render(scene)).attributes() == expected(scene), scene


def test_fill_ratios_match_the_geometry() -> None:
    fills = {
        shape: analyse(
            render(Scene(shape, Colour.BLUE, Size.LARGE, Position.CENTER, Background.WHITE))
        ).fill
        for shape in Shape
    }
    assert fills[Shape.SQUARE] == pytest.approx(1.0, abs=0.02)
    assert fills[Shape.CIRCLE] == pytest.approx(np.pi / 4, abs=0.02)
    assert fills[Shape.TRIANGLE] == pytest.approx(0.5, abs=0.05)


def test_analyser_accepts_pil_and_float_images() -> None:
    scene = Scene(Shape.TRIANGLE, Colour.ORANGE, Size.SMALL, Position.TOP_RIGHT, Background.BLACK)
    rgb = render(scene)
    assert analyse(Image.fromarray(rgb)).attributes() == expected(scene)
    assert analyse(rgb.astype(np.float32) / 255.0).attributes() == expected(scene)


def test_analyser_other_resolution() -> None:
    scene = Scene(Shape.CIRCLE, Colour.RED, Size.LARGE, Position.BOTTOM_LEFT, Background.WHITE)
    big = Image.fromarray(render(scene)).resize((128, 128), Image.Resampling.BICUBIC)
    assert analyse(big).attributes() == expected(scene)


def test_analyser_ignores_small_specks() -> None:
    scene = Scene(Shape.SQUARE, Colour.BLUE, Size.LARGE, Position.TOP_LEFT, Background.WHITE)
    rgb = render(scene).copy()
    rgb[50:52, 50:52] = PALETTE[Colour.RED]  # a 2×2 speck far from the object
    assert analyse(rgb).attributes() == expected(scene)


def test_empty_image_has_background_only() -> None:
    rgb = np.full((64, 64, 3), BACKGROUNDS[Background.GRAY], dtype=np.uint8)
    result = analyse(rgb)
    assert result.background is Background.GRAY
    assert result.colour is None and result.shape is None
    assert result.size is None and result.position is None


def test_largest_component() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:2, 0:2] = True  # 4 pixels
    mask[4:8, 3:6] = True  # 12 pixels
    mask[2, 7] = True
    assert largest_component(mask).sum() == 12
    assert largest_component(np.zeros((4, 4), dtype=bool)).sum() == 0


def test_renderer_is_anti_aliased() -> None:
    scene = Scene(Shape.CIRCLE, Colour.GREEN, Size.SMALL, Position.CENTER, Background.BLACK)
    _, cover = render_with_coverage(scene)
    partial = (cover > 0.0) & (cover < 1.0)
    assert partial.sum() > 10
    assert cover.sum() == pytest.approx(np.pi / 4 * SIZE_PX[Size.SMALL] ** 2, rel=0.02)


def test_palette_is_well_separated() -> None:
    colours = [np.asarray(c, dtype=float) for c in [*PALETTE.values(), *BACKGROUNDS.values()]]
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(colours, 2)]
    assert min(gaps) > 75


def test_held_out_split() -> None:
    assert len(HELD_OUT) == 3
    assert len(seen_scenes()) + len(held_out_scenes()) == len(list(all_scenes())) == 540
    assert all(not s.is_held_out for s in sample_scenes(500, seed=0))
    assert all(s.is_held_out for s in sample_scenes(50, seed=0, held_out=True))
    words = " ".join(caption_corpus())
    assert "purple triangle" not in words and "yellow circle" not in words


def test_captions() -> None:
    scene = Scene(Shape.SQUARE, Colour.RED, Size.SMALL, Position.CENTER, Background.WHITE)
    assert caption(scene) == "a small red square in the center on a white background"
    scene = replace(scene, position=Position.TOP_LEFT, background=Background.GRAY)
    assert caption(scene) == "a small red square in the top left on a gray background"
    for template in range(len(CAPTION_TEMPLATES)):
        text = caption(scene, template)
        assert all(w in text for w in ("small", "red", "square", "top left", "gray"))


def test_dataset_is_deterministic() -> None:
    a = make_scene_set(16, seed=5)
    b = make_scene_set(16, seed=5)
    c = make_scene_set(16, seed=6)
    assert np.array_equal(a.images, b.images) and a.captions() == b.captions()
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (16, 64, 64, 3) and a.images.dtype == np.uint8
