"""The transformer's object-weighted velocity loss: which latent cells it weights, and that
a weight of one is the paper's plain MSE."""

from __future__ import annotations

import pytest
import torch
from diffusers import SD3Transformer2DModel

from training import build
from training.scenes import (
    Background,
    Colour,
    Position,
    Scene,
    Shape,
    Size,
    render_with_coverage,
)
from training.train_transformer import (
    DitConfig,
    LatentSet,
    TextTable,
    flow_loss,
    latent_coverage,
    train_transformer,
)

T = torch.Tensor
Batch = tuple[SD3Transformer2DModel, tuple[T, T, T, T, T]]


def test_a_latent_cell_counts_as_object_when_any_of_its_pixels_does() -> None:
    scene = Scene(Shape.SQUARE, Colour.RED, Size.SMALL, Position.TOP_LEFT, Background.WHITE)
    _, pixels = render_with_coverage(scene)
    cells = latent_coverage(torch.from_numpy(pixels)[None], latent_size=16)
    assert cells.shape == (1, 1, 16, 16)
    touched = torch.from_numpy(pixels).reshape(16, 4, 16, 4).amax(dim=(1, 3)) > 0
    assert torch.equal(cells[0, 0] > 0, touched)
    # A small object sits in the top left quarter, on a handful of the 256 cells.
    assert 9 <= int(touched.sum()) <= 25
    assert not touched[8:].any() and not touched[:, 8:].any()


@pytest.fixture(scope="module")
def batch() -> Batch:
    dims = build.Dims()
    model = build.make_transformer(dims, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    n, side = 3, dims.latent_size
    x0 = torch.randn(n, dims.latent_channels, side, side, generator=gen)
    embeds = torch.randn(n, 77 + 8, dims.t5_d_model, generator=gen)
    pooled = torch.randn(n, sum(dims.clip_projection), generator=gen)
    t = torch.rand(n, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    return model, (x0, embeds, pooled, t, noise)


@torch.no_grad()
def test_a_weight_of_ones_is_the_plain_mse(batch: Batch) -> None:
    model, args = batch
    ones = torch.ones(args[0].shape[0], 1, *args[0].shape[2:])
    plain = flow_loss(model, *args)
    assert torch.allclose(flow_loss(model, *args, ones), plain, rtol=1e-6)
    # Any constant weight, too: the loss is a weighted mean, not a weighted sum.
    assert torch.allclose(flow_loss(model, *args, 7.0 * ones), plain, rtol=1e-6)


@torch.no_grad()
def test_a_weighted_cell_counts_that_many_times(batch: Batch) -> None:
    model, args = batch
    x0 = args[0]
    cells = x0.shape[0] * x0.shape[2] * x0.shape[3]
    plain = flow_loss(model, *args)
    only = torch.zeros(x0.shape[0], 1, *x0.shape[2:])
    only[1, 0, 5, 6] = 1.0
    cell = flow_loss(model, *args, only)  # that cell's mean squared error over the channels
    weight = torch.ones_like(only)
    weight[1, 0, 5, 6] = 10.0
    # The cell counted 10 times among the others: 9 extra copies in sum and count.
    expected = (cells * plain + 9.0 * cell) / (cells + 9.0)
    assert torch.allclose(flow_loss(model, *args, weight), expected, rtol=1e-5)
    assert not torch.allclose(cell, plain)  # else the check could not tell weights apart


def test_an_object_weight_without_coverage_is_refused() -> None:
    dims = build.Dims()
    latents = torch.zeros(2, dims.latent_channels, dims.latent_size, dims.latent_size)
    table = TextTable(
        torch.zeros(2, 77 + 8, dims.t5_d_model), torch.zeros(2, sum(dims.clip_projection)), null=1
    )
    with pytest.raises(ValueError, match="latent coverage"):
        train_transformer(
            build.make_transformer(dims, seed=0),
            LatentSet(latents, torch.zeros(len(latents), dtype=torch.int64)),
            table,
            {},
            DitConfig(steps=1, object_weight=10.0),
        )
