"""Recoloured training images: random object colours that never make a held-out pair."""

from __future__ import annotations

import numpy as np
import torch

from training.analyser import analyse
from training.run import colourless_set
from training.scenes import (
    HELD_OUT,
    Background,
    Colour,
    Position,
    Scene,
    Shape,
    Size,
    colourless_caption,
    make_scene_set,
)
from training.train_vae import Recolourer, VaeConfig, loss_weight


def test_recoloured_objects_keep_their_geometry_and_avoid_held_out_pairs() -> None:
    data = make_scene_set(600, seed=3)
    # Every scene offered for recolouring, as the transformer's colourless scenes are.
    after, _ = colourless_set(data, len(data.scenes), seed=3)
    before, scenes = data.images, data.scenes
    changed = [i for i in range(len(scenes)) if not np.array_equal(before[i], after[i])]
    # Most draws are accepted; the rest (too little contrast, too near a held-out colour)
    # keep their palette colour.
    assert len(changed) > 0.5 * len(scenes)
    for i in changed:
        scene, reads = scenes[i], analyse(after[i])
        assert (reads.shape, reads.size, reads.position, reads.background) == (
            scene.shape,
            scene.size,
            scene.position,
            scene.background,
        )
        assert (scene.shape, reads.colour) not in HELD_OUT
    # The colours really are new, not a palette colour redrawn.
    assert sum(analyse(after[i]).colour != scenes[i].colour for i in changed) > len(changed) / 2


def test_recolouring_is_deterministic_and_respects_the_fraction() -> None:
    data = make_scene_set(64, seed=1)
    images, coverage, idx = (
        torch.from_numpy(data.images),
        torch.from_numpy(data.coverage),
        torch.arange(64),
    )
    recolour = Recolourer(data)

    def run(fraction: float, seed: int) -> torch.Tensor:
        return recolour(images, coverage, idx, fraction, torch.Generator().manual_seed(seed))

    assert torch.equal(run(0.0, 0), images)
    assert torch.equal(run(0.5, 7), run(0.5, 7))
    changed = (run(0.5, 7) != images).flatten(1).any(dim=1)
    assert 0 < int(changed.sum()) < 64


def test_colourless_caption() -> None:
    scene = Scene(Shape.SQUARE, Colour.GREEN, Size.LARGE, Position.TOP_RIGHT, Background.BLACK)
    assert colourless_caption(scene) == "a large square in the top right on a black background"


def test_the_object_margin_weights_a_ring_around_the_object_like_the_object() -> None:
    coverage = torch.zeros(1, 9, 9)
    coverage[0, 4, 4] = 1.0
    coverage[0, 4, 5] = 0.5  # an anti-aliased edge pixel
    plain = loss_weight(coverage, VaeConfig(object_weight=20.0, object_margin=0))
    assert plain[0, 0, 4, 4] == 20.0 and plain[0, 0, 4, 5] == 10.5
    assert int((plain > 1.0).sum()) == 2

    # Each pixel takes the largest coverage within 2 pixels (Chebyshev) of it.
    ringed = loss_weight(coverage, VaeConfig(object_weight=20.0, object_margin=2))[0, 0]
    expected = torch.ones(9, 9)
    expected[2:7, 7] = 10.5  # near the edge pixel only
    expected[2:7, 2:7] = 20.0  # near the fully covered pixel
    assert torch.equal(ringed, expected)
