"""Which part of the text conditioning decides the shape a model draws?

First, how the frozen text encoders mix the two words: over the 18 colour × shape captions,
the shares of the variance of an embedding that are colour, shape and their interaction
(two-way ANOVA). Near-zero interaction means the words arrive additively.

For every seen evaluation prompt, take a second caption that differs only in the shape (a
seen pair too), and generate with one part of the conditioning taken from that caption: the
pooled vector (which drives adaLN), the CLIP tokens, or the T5 tokens (both seen by the joint
attention). The analyser then says whose shape came out. A model that follows the pooled
vector maps each whole caption to a picture, and a held-out pair is a caption it never saw.
Following the tokens is no proof of composing, though: a model trained without the pooled
vector did that and drew held-out pairs worse still (docs/training.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from diffusers import StableDiffusion3Pipeline

from training import build, text
from training.analyser import analyse
from training.evaluate import evaluation_scenes
from training.scenes import HELD_OUT, Colour, Scene, Shape, caption

PARTS = ("nothing", "pooled", "CLIP tokens", "T5 tokens", "everything")


@dataclass(frozen=True)
class SwapResult:
    part: str
    own: int  # images whose shape is the prompt's
    swapped_in: int  # images whose shape is the other caption's
    n: int


def variance_shares(x: torch.Tensor) -> tuple[float, float, float]:
    """Colour, shape and interaction shares of the variance of ``x`` (colours, shapes, ...)."""
    x = x.flatten(2).double()
    centred = x - x.mean((0, 1), keepdim=True)
    colour = centred.mean(1, keepdim=True)
    shape = centred.mean(0, keepdim=True)
    interaction = centred - colour - shape
    total = float(centred.pow(2).sum())
    if total == 0.0:  # the same embedding for every caption (e.g. a zeroed projection)
        return math.nan, math.nan, math.nan
    shares = (colour.expand_as(x), shape.expand_as(x), interaction)
    a, b, c = (float(part.pow(2).sum()) / total for part in shares)
    return a, b, c


@torch.no_grad()
def caption_mixing(
    pipe: StableDiffusion3Pipeline, max_sequence_length: int
) -> dict[str, tuple[float, float, float]]:
    """Variance shares of the pooled vector and of the T5 state at the shape word."""
    template = "a small {} {} in the top left on a white background"
    captions = [template.format(c, s) for c in Colour for s in Shape]
    embeds, pooled = build.encode_captions(pipe, captions, max_sequence_length)
    # T5 gives one token per caption word and no start token: the shape is word 3.
    shape_token = text.CLIP_MAX_LENGTH + 3
    grid = (len(Colour), len(Shape))
    return {
        "pooled vector": variance_shares(pooled.view(*grid, -1)),
        "T5 state at the shape word": variance_shares(embeds[:, shape_token].view(*grid, -1)),
    }


def format_mixing(shares: dict[str, tuple[float, float, float]]) -> str:
    lines = [f"{'share of variance':<30}{'colour':>8}{'shape':>8}{'both':>8}"]
    for name, values in shares.items():
        lines.append(f"{name:<30}" + "".join(f"{v:>8.3f}" for v in values))
    return "\n".join(lines)


def other_shape(scene: Scene) -> Scene:
    """The same scene with the first other shape whose pair with this colour is seen."""
    for shape in Shape:
        if shape != scene.shape and (shape, scene.colour) not in HELD_OUT:
            return replace(scene, shape=shape)
    raise ValueError(f"no other seen shape in {scene.colour}")


def swap(
    embeds: torch.Tensor,
    pooled: torch.Tensor,
    other_embeds: torch.Tensor,
    other_pooled: torch.Tensor,
    part: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditioning with ``part`` taken from the other caption (layout of
    ``encode_prompt``: 77 CLIP tokens, then the T5 tokens)."""
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; one of {PARTS}")
    embeds, pooled = embeds.clone(), pooled.clone()
    clip = slice(0, text.CLIP_MAX_LENGTH)
    t5 = slice(text.CLIP_MAX_LENGTH, None)
    if part in ("pooled", "everything"):
        pooled = other_pooled.clone()
    if part in ("CLIP tokens", "everything"):
        embeds[:, clip] = other_embeds[:, clip]
    if part in ("T5 tokens", "everything"):
        embeds[:, t5] = other_embeds[:, t5]
    return embeds, pooled


@torch.no_grad()
def conditioning_swap(
    pipe: StableDiffusion3Pipeline,
    *,
    steps: int,
    seeds: Sequence[int],
    guidance_scale: float,
    max_sequence_length: int,
) -> list[SwapResult]:
    pipe.set_progress_bar_config(disable=True)
    scenes = evaluation_scenes()["seen"]
    others = [other_shape(s) for s in scenes]
    own = build.encode_captions(pipe, [caption(s) for s in scenes], max_sequence_length)
    alt = build.encode_captions(pipe, [caption(s) for s in others], max_sequence_length)
    null_embeds, null_pooled = build.encode_captions(pipe, [""], max_sequence_length)
    n = len(scenes)
    results = []
    for part in PARTS:
        embeds, pooled = swap(*own, *alt, part)
        own_count = swapped_count = 0
        for seed in seeds:
            images = pipe(
                prompt_embeds=embeds,
                pooled_prompt_embeds=pooled,
                negative_prompt_embeds=null_embeds.expand(n, -1, -1),
                negative_pooled_prompt_embeds=null_pooled.expand(n, -1),
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                generator=[torch.Generator().manual_seed(seed) for _ in range(n)],
                output_type="np",
            ).images
            for image, scene, other in zip(images, scenes, others, strict=True):
                shape = analyse(image).shape
                own_count += shape == scene.shape
                swapped_count += shape == other.shape
        results.append(SwapResult(part, own_count, swapped_count, n * len(seeds)))
    return results


def format_swaps(results: Sequence[SwapResult]) -> str:
    lines = [f"{'taken from the other caption':<30}{'own shape':>12}{'other shape':>14}"]
    for r in results:
        lines.append(f"{r.part:<30}{r.own:>8}/{r.n:<3}{r.swapped_in:>10}/{r.n:<3}")
    return "\n".join(lines)
