"""The prompt-embedding cache on the tiny model: what it returns is what encode_prompt returns,
it keys by every input that changes the embeddings, and it keeps the most recently used texts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from worker.pipeline import WarmPipeline
from worker.prompt_cache import PromptCache, PromptEmbeddings, concat
from worker.settings import WorkerSettings

PROMPT = "a small red circle in the center on a white background"
NEGATIVE = "blurry"


@pytest.fixture(scope="module")
def warm(model_dir: Path) -> WarmPipeline:
    return WarmPipeline(
        WorkerSettings(model=str(model_dir), torch_device="cpu", torch_dtype="float32")
    )


def cache_of(warm: WarmPipeline, maxsize: int) -> PromptCache:
    return PromptCache(
        warm.pipe,
        device=warm.device,
        max_sequence_length=warm.max_sequence_length,
        model=warm.info.id,
        maxsize=maxsize,
    )


def cached(
    cache: PromptCache, warm: WarmPipeline, prompt: str, negative: str = "", *, do_cfg: bool = True
) -> PromptEmbeddings:
    return cache.encode(prompt, negative, do_cfg=do_cfg)


def fresh(
    warm: WarmPipeline, prompt: str, negative: str = "", *, do_cfg: bool = True, images: int = 1
) -> PromptEmbeddings:
    with torch.inference_mode():
        return PromptEmbeddings(
            *warm.pipe.encode_prompt(
                prompt=prompt,
                prompt_2=None,
                prompt_3=None,
                negative_prompt=negative,
                do_classifier_free_guidance=do_cfg,
                num_images_per_prompt=images,
                device=warm.device,
                max_sequence_length=warm.max_sequence_length,
            )
        )


def assert_same(got: PromptEmbeddings, expected: PromptEmbeddings) -> None:
    for name, a, b in zip(PromptEmbeddings._fields, got, expected, strict=True):
        if b is None:
            assert a is None, name
        else:
            assert a is not None and a.dtype == b.dtype and torch.equal(a, b), name


def lookups(warm: WarmPipeline, result: str) -> float:
    labels = {"model": warm.info.id, "result": result}
    return REGISTRY.get_sample_value("sd3serve_prompt_cache_lookups_total", labels) or 0.0


def test_a_hit_is_what_a_fresh_encode_gives(warm: WarmPipeline) -> None:
    cache = cache_of(warm, 8)
    first = cached(cache, warm, PROMPT, NEGATIVE)
    # A generation from the cached tensors must leave them as they were.
    with torch.inference_mode():
        warm.pipe(
            prompt_embeds=first.embeds,
            negative_prompt_embeds=first.negative_embeds,
            pooled_prompt_embeds=first.pooled,
            negative_pooled_prompt_embeds=first.negative_pooled,
            width=64,
            height=64,
            num_inference_steps=2,
            guidance_scale=4.5,
            generator=torch.Generator(device="cpu").manual_seed(0),
            output_type="latent",
        )
    hits = lookups(warm, "hit")
    again = cached(cache, warm, PROMPT, NEGATIVE)
    assert lookups(warm, "hit") == hits + 2  # the prompt and the negative prompt
    assert all(a is b for a, b in zip(again, first, strict=True))
    assert_same(again, fresh(warm, PROMPT, NEGATIVE))
    assert_same(again.repeat(3), fresh(warm, PROMPT, NEGATIVE, images=3))


def test_negative_prompt_and_guidance_are_part_of_the_key(warm: WarmPipeline) -> None:
    cache = cache_of(warm, 8)
    plain = cached(cache, warm, PROMPT, "")
    negative = cached(cache, warm, PROMPT, NEGATIVE)
    assert plain.embeds is negative.embeds
    assert plain.negative_embeds is not None and negative.negative_embeds is not None
    assert not torch.equal(plain.negative_embeds, negative.negative_embeds)
    assert_same(negative, fresh(warm, PROMPT, NEGATIVE))
    unguided = cached(cache, warm, PROMPT, NEGATIVE, do_cfg=False)
    assert_same(unguided, fresh(warm, PROMPT, NEGATIVE, do_cfg=False))
    assert unguided.negative_embeds is None and unguided.negative_pooled is None
    # A negative prompt that is another job's prompt is the same text, encoded once.
    misses = lookups(warm, "miss")
    as_prompt = cached(cache, warm, NEGATIVE, do_cfg=False)
    assert lookups(warm, "miss") == misses
    assert as_prompt.embeds is negative.negative_embeds


def test_the_least_recently_used_text_goes_first(warm: WarmPipeline) -> None:
    cache = cache_of(warm, 2)
    a = cached(cache, warm, "a", do_cfg=False)
    cached(cache, warm, "b", do_cfg=False)
    assert cached(cache, warm, "a", do_cfg=False).embeds is a.embeds  # now the most recent
    cached(cache, warm, "c", do_cfg=False)  # evicts b
    assert len(cache) == 2
    misses = lookups(warm, "miss")
    assert cached(cache, warm, "a", do_cfg=False).embeds is a.embeds
    assert lookups(warm, "miss") == misses
    b = cached(cache, warm, "b", do_cfg=False)
    assert lookups(warm, "miss") == misses + 1
    assert_same(b, fresh(warm, "b", do_cfg=False))


def test_size_zero_keeps_nothing(warm: WarmPipeline) -> None:
    cache = cache_of(warm, 0)
    misses = lookups(warm, "miss")
    first = cached(cache, warm, PROMPT, NEGATIVE)
    again = cached(cache, warm, PROMPT, NEGATIVE)
    assert len(cache) == 0
    assert lookups(warm, "miss") == misses + 4
    assert first.embeds is not again.embeds
    assert_same(again, fresh(warm, PROMPT, NEGATIVE))


def test_jobs_rows_concatenate_in_order(warm: WarmPipeline) -> None:
    cache = cache_of(warm, 8)
    x = cached(cache, warm, "x", NEGATIVE)
    y = cached(cache, warm, "y")
    both = concat([x.repeat(2), y])
    assert torch.equal(both.embeds, torch.cat([x.embeds, x.embeds, y.embeds]))
    assert torch.equal(both.pooled, torch.cat([x.pooled, x.pooled, y.pooled]))
    assert x.negative_embeds is not None and y.negative_embeds is not None
    assert both.negative_embeds is not None
    assert torch.equal(
        both.negative_embeds, torch.cat([x.negative_embeds, x.negative_embeds, y.negative_embeds])
    )
    with pytest.raises(ValueError, match="guidance"):
        concat([x, cached(cache, warm, "y", do_cfg=False)])
