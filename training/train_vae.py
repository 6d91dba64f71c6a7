"""Stage 1: train the 16-channel AutoencoderKL on the scene set and measure its latent stats.

Loss: L1 reconstruction with object pixels weighted ×20 (by their rendered coverage) plus a
small KL term. With plain L1 the prototype's VAE learned the backgrounds (most pixels) and
washed out object colours; weighting the object fixed that.

Recolouring (optional, ``recolour``): part of each batch shows its object in a random colour
instead of the palette's. Trained on the six palette colours alone, the decoder ties shapes to
colours: it draws small purple triangles (a held-out pair) with a rounded apex, which the
analyser reads as a circle. Random colours are meant to make the edges it learns colour-blind.
No recoloured image is ever nearer to the colour of a held-out pair than to an allowed palette
colour, so the held-out pairs stay out of training. ``Recolourer`` also draws the
transformer's colourless scenes (``run.colourless_set``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm import tqdm

from training.analyser import ATTRIBUTES, analyse
from training.scenes import BACKGROUNDS, HELD_OUT, PALETTE, Scene, SceneSet, Shape


@dataclass(frozen=True)
class VaeConfig:
    steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    object_weight: float = 20.0
    # Pixels around the object weighted as the object is. With no margin, drawing the object
    # too big costs 1/20 of drawing it too small, and the decoder rounds corners and apexes.
    # A 2-pixel margin halved the reconstruction error at the same steps and lifted the
    # held-out shape ceiling from 83 to 93 % (docs/training.md, the fourth recipe).
    object_margin: int = 2
    # Fraction of each batch whose object is redrawn in a random colour (see the docstring).
    # Off by default: at 0.5 and this step budget the VAE drew every shape worse (analyser
    # shape accuracy on reconstructions 84 / 75 % seen / held-out, against 100 / 89 %).
    recolour: float = 0.0
    # Per latent element, relative to the per-pixel L1: enough to keep the posterior a proper
    # distribution with a sane scale, far too little to blur the reconstructions.
    kl_weight: float = 1e-4
    # bf16 autocast roughly halves the step time on CPUs with AMX, and cuts it by 1.6× on an
    # AMD EPYC with AVX512-BF16 (`python -m training bench`); weights, optimiser and losses
    # stay fp32.
    bf16: bool = False
    seed: int = 0


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) → float (N, 3, H, W) in [-1, 1], the pipeline's VAE input range."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_images(x: torch.Tensor) -> np.ndarray:
    """Inverse of ``to_tensor``, with the pipeline's clamping and rounding."""
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()


# A random colour must stand out from the background by at least this much (RGB units), as
# every palette colour does, so that the object is there to learn from.
MIN_RECOLOUR_CONTRAST = 60.0
# A random colour must be this much nearer (RGB units) to some allowed palette colour than to
# the colour of a held-out pair with the image's shape: rounding to 8 bits and the analyser's
# median must not tip it over the boundary.
HELD_OUT_MARGIN = 30.0


class Recolourer:
    """Redraws the object of chosen images in random colours, from their rendered coverage.

    Colours are drawn uniformly in RGB and rejected (the image then keeps its palette colour)
    when too close to the background or when their nearest palette colour would make the
    image a held-out (shape, colour) pair.
    """

    def __init__(self, data: SceneSet) -> None:
        self.background = torch.tensor(
            [BACKGROUNDS[s.background] for s in data.scenes], dtype=torch.float32
        )
        shapes = list(Shape)
        self.shape = torch.tensor([shapes.index(s.shape) for s in data.scenes])
        colours = list(PALETTE)
        self.palette = torch.tensor([PALETTE[c] for c in colours], dtype=torch.float32)
        # forbidden[shape, colour]: that pair is held out.
        self.forbidden = torch.tensor(
            [[(shape, c) in HELD_OUT for c in colours] for shape in shapes]
        )

    def __call__(
        self,
        images: torch.Tensor,
        coverage: torch.Tensor,
        idx: torch.Tensor,
        fraction: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """uint8 (B, H, W, 3) images of rows ``idx``; returns them with some recoloured."""
        n = len(idx)
        chosen = torch.rand(n, generator=generator) < fraction
        rgb = torch.rand(n, 3, generator=generator) * 255.0
        bg = self.background[idx]
        dist = torch.cdist(rgb, self.palette)
        forbidden = self.forbidden[self.shape[idx]]
        to_allowed = dist.masked_fill(forbidden, float("inf")).min(dim=1).values
        to_forbidden = dist.masked_fill(~forbidden, float("inf")).min(dim=1).values
        ok = (
            chosen
            & ((rgb - bg).norm(dim=1) >= MIN_RECOLOUR_CONTRAST)
            & (to_forbidden - to_allowed >= HELD_OUT_MARGIN)
        )
        if not bool(ok.any()):
            return images
        alpha = coverage[ok].unsqueeze(-1)
        drawn = bg[ok, None, None, :] * (1.0 - alpha) + rgb[ok, None, None, :] * alpha
        out = images.clone()
        out[ok] = drawn.round().to(torch.uint8)
        return out


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the base rate.

    The warm-up is capped at a tenth of the run so that short (smoke) runs still train.
    """
    warmup = min(warmup, max(1, total // 10))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def loss_weight(coverage: torch.Tensor, cfg: VaeConfig) -> torch.Tensor:
    """Per-pixel L1 weight (B, 1, H, W) from the object coverage (B, H, W): ``object_weight``
    on the object and on ``object_margin`` pixels around it, 1 elsewhere."""
    return object_weight_map(coverage.unsqueeze(1), cfg.object_weight, cfg.object_margin)


def object_weight_map(coverage: torch.Tensor, weight: float, margin: int) -> torch.Tensor:
    """``weight`` where ``coverage`` (B, 1, H, W) is 1 and on ``margin`` cells around it
    (linear in the coverage between), 1 elsewhere: the loss weight of the VAE's pixels and of
    the transformer's latent cells."""
    # A margin of 0 pools over 1×1: the coverage itself.
    cov = torch.nn.functional.max_pool2d(coverage, 2 * margin + 1, stride=1, padding=margin)
    return 1.0 + (weight - 1.0) * cov


def vae_loss(
    vae: AutoencoderKL,
    x: torch.Tensor,
    coverage: torch.Tensor,
    cfg: VaeConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    device = x.device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.bf16):
        posterior = vae.encode(x).latent_dist
    # Sampling and KL in fp32 whatever the autocast: both are tiny and precision-sensitive.
    mean, logvar = posterior.mean.float(), posterior.logvar.float()
    # Noise from the CPU generator whatever the device, so a seed means the same draws.
    noise = torch.randn(mean.shape, generator=generator).to(x.device)
    z = mean + torch.exp(0.5 * logvar) * noise
    with torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.bf16):
        recon = vae.decode(z).sample.float()
    weight = loss_weight(coverage, cfg)
    l1 = (weight * (recon - x).abs()).sum() / (weight.sum() * x.shape[1])
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    return l1 + cfg.kl_weight * kl, l1


def train_vae(
    vae: AutoencoderKL,
    data: SceneSet,
    cfg: VaeConfig,
    on_log: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train in place; returns the per-step weighted L1 (the curve worth plotting)."""
    images = torch.from_numpy(data.images)
    coverage = torch.from_numpy(data.coverage)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup, cfg.steps))
    device = next(vae.parameters()).device
    recolour = Recolourer(data)
    vae.train()
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="vae", unit="step", mininterval=2.0)
    for step in bar:
        idx = torch.randint(0, len(images), (cfg.batch_size,), generator=gen)
        batch = images[idx]
        if cfg.recolour > 0:
            batch = recolour(batch, coverage[idx], idx, cfg.recolour, gen)
        x = to_tensor(batch.numpy()).to(device)
        loss, l1 = vae_loss(vae, x, coverage[idx].to(device), cfg, gen)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        opt.step()
        sched.step()
        losses.append(float(l1.detach()))
        if step % 50 == 0 or step == cfg.steps - 1:
            bar.set_postfix(l1=f"{np.mean(losses[-50:]):.4f}")
            if on_log is not None:
                on_log(step, float(np.mean(losses[-50:])))
    vae.eval()
    return losses


@torch.no_grad()
def encode_means(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Posterior means (N, C, h, w), unnormalised.

    Means rather than samples: the prototype's transformer stalled on noisy samples from a
    briefly trained VAE, whose posterior variance is still large and uninformative.
    """
    vae.eval()
    device = next(vae.parameters()).device
    out = [
        vae.encode(to_tensor(images[i : i + batch_size]).to(device)).latent_dist.mean.cpu()
        for i in tqdm(range(0, len(images), batch_size), desc="encode", unit="batch")
    ]
    return torch.cat(out)


def latent_stats(latents: torch.Tensor) -> tuple[float, float]:
    """(shift_factor, scaling_factor) so that (z - shift) * scale has zero mean, unit std."""
    shift = float(latents.mean())
    scale = 1.0 / float((latents - shift).std())
    return shift, scale


def set_latent_stats(vae: AutoencoderKL, shift: float, scale: float) -> None:
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: np.ndarray) -> np.ndarray:
    vae.eval()
    device = next(vae.parameters()).device
    x = to_tensor(images).to(device)
    return to_images(vae.decode(vae.encode(x).latent_dist.mean).sample.cpu())


def read_accuracy(images: np.ndarray, scenes: Sequence[Scene]) -> dict[str, float]:
    """The analyser's accuracy per attribute on images of the given scenes."""
    reads = [analyse(image).attributes() for image in images]
    return {
        attr: float(
            np.mean([r[attr] == str(getattr(s, attr)) for r, s in zip(reads, scenes, strict=True)])
        )
        for attr in ATTRIBUTES
    }


def reconstruction_report(vae: AutoencoderKL, data: SceneSet) -> dict[str, float]:
    """Mean absolute error and the analyser's attribute accuracy on reconstructions.

    Colour accuracy here is the ceiling for the whole model: the transformer can only make
    what the decoder can draw.
    """
    t0 = time.perf_counter()
    recon = reconstruct(vae, data.images)
    report = {"mae": float(np.abs(recon.astype(np.float32) - data.images).mean() / 255.0)}
    for attr, accuracy in read_accuracy(recon, data.scenes).items():
        report[f"{attr}_accuracy"] = accuracy
    report["seconds"] = time.perf_counter() - t0
    return report
