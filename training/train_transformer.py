"""Stage 2: train the MMDiT with rectified flow on cached VAE latents and caption embeddings.

Rectified flow (SD3 convention, t = 1 is pure noise): z_t = (1 − t)·x0 + t·ε and the
transformer predicts the velocity ε − x0 with a plain MSE. The transformer receives
``timestep = 1000·t``, which is what FlowMatchEulerDiscreteScheduler feeds it at inference.

Everything the frozen parts produce is computed once: latents (VAE posterior means) and the
prompt embeddings of every distinct caption (through the pipeline's own ``encode_prompt``,
so training sees bit-for-bit the conditioning inference will). Each step only runs the
transformer.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from diffusers import SD3Transformer2DModel
from tqdm import tqdm

from training.train_vae import lr_factor, object_weight_map

TimestepMode = Literal["logit-normal", "uniform"]


@dataclass(frozen=True)
class EncoderPart:
    """Where one text encoder's output sits in the pipeline's concatenated embeddings."""

    tokens: slice  # rows of ``embeds``
    channels: slice  # columns of ``embeds``
    pooled: slice  # columns of ``pooled`` (empty for T5, which has no pooled output)


@dataclass(frozen=True)
class TextTable:
    """Embeddings of distinct captions at one T5 length; row ``null`` is the empty prompt."""

    embeds: torch.Tensor  # (U, 77 + T5 length, joint_attention_dim)
    pooled: torch.Tensor  # (U, pooled_projection_dim)
    null: int
    parts: tuple[EncoderPart, ...] = ()  # needed only for per-encoder dropout


@dataclass(frozen=True)
class LatentSet:
    latents: torch.Tensor  # (N, C, h, w), already normalised with the VAE shift/scale
    captions: torch.Tensor  # (N,) int64 rows of the TextTables
    # (N, 1, h, w) the object's largest pixel coverage in each latent cell (latent_coverage);
    # needed only for an object-weighted loss.
    coverage: torch.Tensor | None = None


def latent_coverage(coverage: torch.Tensor, latent_size: int) -> torch.Tensor:
    """Pixel coverage (N, H, W) → (N, 1, h, w): 1 for a latent cell whose pixels the object
    touches at all. Max, not mean: the cells at the object's edges carry its outline."""
    factor = coverage.shape[-1] // latent_size
    return torch.nn.functional.max_pool2d(coverage.unsqueeze(1), factor)


@dataclass(frozen=True)
class DitConfig:
    # Batch 32 for twice the steps of batch 64 (a step costs ~linearly in the batch here) drew
    # shape better at the same cost (docs/training.md). At patch 1 a step takes ~0.9 s here at
    # 3 heads, and the hour leaves the transformer about 2,000 of them after the fp32 VAE. At
    # 2,000 steps the earlier 2e-3 drew held-out shape at 58 % (83 % at 2,800 steps); 4e-3
    # draws it at 88 %, seen shape at its 95 % target (docs/training.md, the sixth recipe).
    steps: int = 2000
    batch_size: int = 32
    lr: float = 4e-3
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cfg_drop: float = 0.1  # fraction of samples trained with the empty prompt
    # SD3 drops each of its three text encoders independently (46.3 % in the paper): a
    # dropped encoder's part of the conditioning is that of the empty prompt. Off by default.
    encoder_drop: float = 0.0
    timesteps: TimestepMode = "logit-normal"
    # Timestep shift t → s·t / (1 + (s − 1)·t) on the logit-normal draws, SD3's shift for its
    # 1024² sampling; the scheduler is saved with the same value. At 64×64 it is not a
    # resolution correction: it trains the noisy end, where the shape is decided, more
    # (docs/training.md, "SD3's shift of 3 in training").
    shift: float = 3.0
    # Loss weight of the latent cells the object touches, and of ``object_margin`` cells
    # around them (1 = the paper's plain MSE). A small object covers about 12 of the 256
    # cells, so the plain MSE spends little of its gradient on the shape; the VAE's loss
    # weights the object for the same reason.
    object_weight: float = 1.0
    object_margin: int = 1
    val_every: int = 500
    seed: int = 0


@dataclass
class History:
    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0


def sample_t(n: int, mode: TimestepMode, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Training times in (0, 1): logit-normal(0, 1) as SD3, or uniform for the ablation.

    The shift maps t → s·t / (1 + (s − 1)·t), the same map the scheduler applies at inference.
    """
    if mode == "logit-normal":
        t = torch.sigmoid(torch.randn(n, generator=generator))
    elif mode == "uniform":
        t = torch.rand(n, generator=generator)
    else:
        raise ValueError(f"unknown timestep mode {mode!r}")
    return shift * t / (1.0 + (shift - 1.0) * t)


def drop_encoders(
    embeds: torch.Tensor,
    pooled: torch.Tensor,
    table: TextTable,
    p: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample loses each encoder's conditioning with probability ``p`` (independently),
    replaced by the empty prompt's, so losing all three is exactly the CFG null condition."""
    if not table.parts:
        raise ValueError("per-encoder dropout needs the table's encoder parts")
    embeds, pooled = embeds.clone(), pooled.clone()
    for part in table.parts:
        hit = torch.rand(len(embeds), generator=generator) < p
        embeds[hit, part.tokens, part.channels] = table.embeds[
            table.null, part.tokens, part.channels
        ]
        pooled[hit, part.pooled] = table.pooled[table.null, part.pooled]
    return embeds, pooled


def flow_loss(
    model: SD3Transformer2DModel,
    x0: torch.Tensor,
    embeds: torch.Tensor,
    pooled: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Velocity MSE; with ``weight`` (B, 1, h, w), the weighted mean over every cell and
    channel (so a weight of all ones is the plain MSE)."""
    device = next(model.parameters()).device
    x0, embeds, pooled, t, noise = (v.to(device) for v in (x0, embeds, pooled, t, noise))
    tb = t.view(-1, 1, 1, 1)
    zt = (1.0 - tb) * x0 + tb * noise
    pred: torch.Tensor = model(
        hidden_states=zt,
        encoder_hidden_states=embeds,
        pooled_projections=pooled,
        timestep=t * 1000.0,
        return_dict=False,
    )[0]
    if weight is None:
        return torch.nn.functional.mse_loss(pred, noise - x0)
    weight = weight.to(device)
    squared = weight * (pred - (noise - x0)).square()
    return squared.sum() / (weight.sum() * x0.shape[1])


VAL_TIMESTEPS: tuple[TimestepMode, ...] = ("logit-normal", "uniform")


@torch.no_grad()
def validate(
    model: SD3Transformer2DModel,
    data: LatentSet,
    table: TextTable,
    timesteps: TimestepMode,
    seed: int,
    batch_size: int = 64,
) -> float:
    """Velocity MSE at fixed (t, ε) per sample, so values are comparable across steps and runs.

    ``timesteps`` picks the t distribution of the fixed set, whatever the model was trained
    with: the velocity MSE depends strongly on t, so two models trained with different samplers
    are only comparable on the same set (both are reported, unshifted).
    """
    gen = torch.Generator().manual_seed(seed + 12345)
    t_all = sample_t(len(data.latents), timesteps, 1.0, gen)
    noise_all = torch.randn(data.latents.shape, generator=gen)
    total = 0.0
    for i in range(0, len(data.latents), batch_size):
        sl = slice(i, i + batch_size)
        cap = data.captions[sl]
        loss = flow_loss(
            model, data.latents[sl], table.embeds[cap], table.pooled[cap], t_all[sl], noise_all[sl]
        )
        total += float(loss) * len(cap)
    return total / len(data.latents)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    # One fused call instead of one small kernel per tensor.
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)


def val_key(split: str, timesteps: str) -> str:
    return f"{split}, {timesteps} t"


def train_transformer(
    model: SD3Transformer2DModel,
    train: LatentSet,
    table: TextTable,
    val: dict[str, LatentSet],
    cfg: DitConfig,
    on_val: Callable[[int, dict[str, float], SD3Transformer2DModel], None] | None = None,
) -> tuple[SD3Transformer2DModel, History]:
    """Train ``model`` in place and return its EMA copy (the weights to ship) and the history.

    ``on_val`` gets each validation's step, scores and the EMA model as it stands then.
    """
    cover = train.coverage if cfg.object_weight != 1.0 else None
    if cfg.object_weight != 1.0 and cover is None:
        raise ValueError("an object-weighted loss needs the training set's latent coverage")
    gen = torch.Generator().manual_seed(cfg.seed)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup, cfg.steps))
    history = History()

    def run_validation(step: int) -> None:
        scores = {
            val_key(name, mode): validate(ema, data, table, mode, cfg.seed)
            for name, data in val.items()
            for mode in VAL_TIMESTEPS
        }
        history.val_step.append(step)
        for name, value in scores.items():
            history.val.setdefault(name, []).append(value)
        if on_val is not None:
            on_val(step, scores, ema)

    start = time.perf_counter()
    run_validation(0)
    model.train()
    bar = tqdm(range(cfg.steps), desc="transformer", unit="step", mininterval=2.0)
    recent: list[float] = []
    for step in bar:
        idx = torch.randint(0, len(train.latents), (cfg.batch_size,), generator=gen)
        cap = train.captions[idx].clone()
        cap[torch.rand(cfg.batch_size, generator=gen) < cfg.cfg_drop] = table.null
        x0 = train.latents[idx]
        t = sample_t(cfg.batch_size, cfg.timesteps, cfg.shift, gen)
        noise = torch.randn(x0.shape, generator=gen)

        embeds, pooled = table.embeds[cap], table.pooled[cap]
        if cfg.encoder_drop > 0:  # no extra draws otherwise: the default run stays as it was
            embeds, pooled = drop_encoders(embeds, pooled, table, cfg.encoder_drop, gen)
        weight = None
        if cover is not None:
            weight = object_weight_map(cover[idx], cfg.object_weight, cfg.object_margin)
        loss = flow_loss(model, x0, embeds, pooled, t, noise, weight)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        # EMA warm-up (as in diffusers' EMAModel): early on, follow the weights closely.
        ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))

        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step}")
        history.step.append(step)
        history.loss.append(value)
        recent = [*recent[-49:], value]
        if step % 25 == 0:
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
        if (step + 1) % cfg.val_every == 0 or step + 1 == cfg.steps:
            run_validation(step + 1)
    history.seconds = time.perf_counter() - start
    return ema, history
