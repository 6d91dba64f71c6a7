"""Throughput of each training stage at the intended sizes, for sizing the step budget.

Times a few optimiser steps on random data (the data pipeline is negligible next to the
models) after warm-up steps, and reports the median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from training import build, scenes, train_transformer, train_vae


def _median_seconds(step: Callable[[], None], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_vae(batch_size: int, bf16: bool, repeats: int) -> float:
    dims = build.Dims()
    vae = build.make_vae(dims, seed=0)
    data = scenes.make_scene_set(batch_size, seed=0)
    x = train_vae.to_tensor(data.images)
    cover = torch.from_numpy(data.coverage)
    cfg = train_vae.VaeConfig(batch_size=batch_size, bf16=bf16)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        loss, _ = train_vae.vae_loss(vae, x, cover, cfg, gen)
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()

    return _median_seconds(step, 2, repeats)


def bench_transformer(batch_size: int, t5_length: int, repeats: int) -> float:
    dims = build.Dims()
    model = build.make_transformer(dims, seed=0)
    context = 77 + t5_length
    x0 = torch.randn(batch_size, dims.latent_channels, dims.latent_size, dims.latent_size)
    embeds = torch.randn(batch_size, context, dims.t5_d_model)
    pooled = torch.randn(batch_size, sum(dims.clip_projection))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        t = torch.rand(batch_size)
        loss = train_transformer.flow_loss(model, x0, embeds, pooled, t, torch.randn_like(x0))
        opt.zero_grad()
        torch.autograd.backward(loss)
        opt.step()

    return _median_seconds(step, 2, repeats)


def bench_encode(n: int) -> float:
    """Seconds per image for encoding posterior means (batch 256, fp32)."""
    vae = build.make_vae(build.Dims(), seed=0)
    images = scenes.make_scene_set(n, seed=0).images
    t0 = time.perf_counter()
    with torch.no_grad():
        vae.encode(train_vae.to_tensor(images)).latent_dist.mean.sum()
    return (time.perf_counter() - t0) / n


def bench_inference(batch_size: int, t5_length: int, repeats: int) -> float:
    """Seconds per denoising step for ``batch_size`` images with CFG (2× batch)."""
    dims = build.Dims()
    model = build.make_transformer(dims, seed=0).eval()
    n = 2 * batch_size
    x = torch.randn(n, dims.latent_channels, dims.latent_size, dims.latent_size)
    embeds = torch.randn(n, 77 + t5_length, dims.t5_d_model)
    pooled = torch.randn(n, sum(dims.clip_projection))

    def step() -> None:
        with torch.no_grad():
            model(x, embeds, pooled, torch.full((n,), 500.0))

    return _median_seconds(step, 1, repeats)


def run(
    vae_batch: int = 32,
    dit_batch: int = 64,
    t5_lengths: tuple[int, ...] = (build.MAX_SEQUENCE_LENGTH, 256),
    repeats: int = 5,
) -> dict[str, float]:
    results: dict[str, float] = {}
    for bf16 in (True, False):
        key = f"vae_step_s[batch={vae_batch},{'bf16' if bf16 else 'fp32'}]"
        results[key] = bench_vae(vae_batch, bf16, repeats)
    for length in t5_lengths:
        results[f"dit_step_s[batch={dit_batch},t5={length}]"] = bench_transformer(
            dit_batch, length, repeats
        )
    results["encode_s_per_image"] = bench_encode(256)
    results[f"inference_step_s[30 images,cfg,t5={t5_lengths[0]}]"] = bench_inference(
        30, t5_lengths[0], repeats
    )
    return {k: float(np.round(v, 4)) for k, v in results.items()}
