"""Cross-job batching: which queued jobs may share one pipeline call, and picking them.

Jobs share a call when everything that shapes the denoising loop is the same: the model, the
image size, the number of steps and the guidance scale (the scheduler's shift is the model's).
Prompts, negative prompts, seeds, image counts and output formats are each job's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from common.contract import GenerateParams

# How far down its queue a worker looks for jobs to add to the one it took. Taking a compatible
# job from behind incompatible ones lets it overtake them, by at most one batch's time.
LOOKAHEAD = 32


class BatchKey(NamedTuple):
    model: str
    width: int
    height: int
    steps: int
    guidance_scale: float


def batch_key(params: GenerateParams) -> BatchKey:
    return BatchKey(params.model, params.width, params.height, params.steps, params.guidance_scale)


def pick(
    first: GenerateParams,
    waiting: Sequence[tuple[str, GenerateParams | None]],
    max_images: int,
) -> list[str]:
    """The waiting jobs, in queue order, that fit in one call with `first` within `max_images`
    images in all (None: a job whose record is gone, skipped)."""
    room = max_images - first.num_images
    key = batch_key(first)
    chosen = []
    for job_id, params in waiting:
        if room <= 0:
            break
        if params is not None and params.num_images <= room and batch_key(params) == key:
            chosen.append(job_id)
            room -= params.num_images
    return chosen
