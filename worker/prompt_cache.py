"""Prompt embeddings, kept on the device by text, least recently used dropped first.

A job's prompt and negative prompt go through CLIP-L, CLIP-G and T5 before it denoises, yet the
same texts come back often: a client's re-rolls and retries, and above all the negative prompt,
which most jobs leave empty. SD3 encodes a negative prompt exactly as it encodes a prompt (the
same encoders, padding and length; `clip_skip` aside, which the worker never sets), so the cache
holds each text once, keyed by model, text and T5 context length, as one row: the embeddings of
any job are put together from one entry, two with guidance. The caller repeats the rows per
image (`repeat`) and stacks the rows of jobs run together (`concat`).

Not thread-safe: like the pipeline itself, it is used from the one thread that runs jobs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from worker import metrics


class PromptEmbeddings(NamedTuple):
    """What the pipeline takes instead of texts; the negatives are None without guidance."""

    embeds: Tensor
    negative_embeds: Tensor | None
    pooled: Tensor
    negative_pooled: Tensor | None

    def repeat(self, n: int) -> PromptEmbeddings:
        """Each row `n` times in a row, as encode_prompt's num_images_per_prompt=n lays them."""
        return PromptEmbeddings(
            self.embeds.repeat_interleave(n, dim=0),
            None if self.negative_embeds is None else self.negative_embeds.repeat_interleave(n, 0),
            self.pooled.repeat_interleave(n, dim=0),
            None if self.negative_pooled is None else self.negative_pooled.repeat_interleave(n, 0),
        )


def concat(parts: Sequence[PromptEmbeddings]) -> PromptEmbeddings:
    """The rows of several jobs, in order, for one pipeline call; all with guidance or none."""
    fields = []
    for column in zip(*parts, strict=True):
        present = [t for t in column if t is not None]
        if present and len(present) != len(column):
            raise ValueError("jobs with and without guidance cannot run in one pipeline call")
        fields.append(torch.cat(present) if present else None)
    embeds, negative_embeds, pooled, negative_pooled = fields
    if embeds is None or pooled is None:
        raise ValueError("no embeddings to concatenate")
    return PromptEmbeddings(embeds, negative_embeds, pooled, negative_pooled)


class _Text(NamedTuple):
    embeds: Tensor
    pooled: Tensor


class PromptCache:
    """The embeddings of up to `maxsize` texts by one pipeline (`pipe.encode_prompt` with the
    model's context length), for the model named `model`; 0 keeps none (every lookup encodes).
    """

    def __init__(
        self,
        pipe: Any,
        *,
        device: torch.device,
        max_sequence_length: int,
        model: str,
        maxsize: int,
    ) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must be 0 or more, got {maxsize}")
        self.pipe = pipe
        self.device = device
        self.max_sequence_length = max_sequence_length
        self.maxsize = maxsize
        self._hit = metrics.PROMPT_CACHE.labels(model, "hit")
        self._miss = metrics.PROMPT_CACHE.labels(model, "miss")
        self._entries: OrderedDict[str, _Text] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def encode(self, prompt: str, negative_prompt: str, *, do_cfg: bool) -> PromptEmbeddings:
        """One row of embeddings for the prompt, and for the negative prompt when `do_cfg`, as
        `pipe.encode_prompt(..., num_images_per_prompt=1)` returns them. The tensors are the
        cache's own: use them, never change them in place."""
        positive = self._text(prompt)
        if not do_cfg:
            return PromptEmbeddings(positive.embeds, None, positive.pooled, None)
        negative = self._text(negative_prompt)
        return PromptEmbeddings(positive.embeds, negative.embeds, positive.pooled, negative.pooled)

    def _text(self, text: str) -> _Text:
        if (entry := self._entries.get(text)) is not None:
            self._entries.move_to_end(text)
            self._hit.inc()
            return entry
        self._miss.inc()
        with torch.inference_mode():
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompt=text,
                prompt_2=None,
                prompt_3=None,
                do_classifier_free_guidance=False,
                num_images_per_prompt=1,
                device=self.device,
                max_sequence_length=self.max_sequence_length,
            )
        entry = _Text(embeds, pooled)
        if self.maxsize:
            self._entries[text] = entry
            if len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return entry
