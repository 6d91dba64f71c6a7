"""Attribute accuracy of a pipeline on a fixed evaluation set, read by the analyser.

The set is fixed (no randomness apart from the generator seeds): 30 seen prompts (two per
seen shape/colour pair; size × position × background cycle so that all 30 of those
combinations occur exactly once) and 30 held-out prompts (ten per held-out pair, every
size × position, backgrounds cycling), each generated with every seed at every step count.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusion3Pipeline
from PIL import Image
from tqdm import tqdm

from training import build, train_transformer, train_vae
from training.analyser import ATTRIBUTES, analyse
from training.build import MAX_SEQUENCE_LENGTH
from training.scenes import (
    HELD_OUT,
    Background,
    Colour,
    Position,
    Scene,
    SceneSet,
    Shape,
    Size,
    caption,
    make_scene_set,
    render,
)

STEP_COUNTS = (4, 8, 16, 28)
VAL_SEEN, VAL_HELD_OUT = 128, 128
SEEDS = (0, 1)
SPLITS = ("seen", "held-out")


def _cycled(k: int, pair: tuple[Shape, Colour]) -> Scene:
    sizes, positions, backgrounds = list(Size), list(Position), list(Background)
    return Scene(
        pair[0],
        pair[1],
        sizes[k % len(sizes)],
        positions[(k // len(sizes)) % len(positions)],
        backgrounds[k % len(backgrounds)],
    )


def evaluation_scenes() -> dict[str, list[Scene]]:
    seen_pairs = [(s, c) for s in Shape for c in Colour if (s, c) not in HELD_OUT]
    held_pairs = sorted(HELD_OUT)
    seen = [_cycled(k, seen_pairs[k // 2]) for k in range(2 * len(seen_pairs))]
    held = [_cycled(k, held_pairs[k // 10]) for k in range(10 * len(held_pairs))]
    return {"seen": seen, "held-out": held}


def validation_scenes(seed: int) -> dict[str, SceneSet]:
    """The validation sets of a run with this seed (jittered, paraphrased like training)."""
    return {
        "seen": make_scene_set(VAL_SEEN, seed + 1000),
        "held-out": make_scene_set(VAL_HELD_OUT, seed + 2000, held_out=True),
    }


@torch.no_grad()
def validation_loss(
    pipe: StableDiffusion3Pipeline, seed: int, max_sequence_length: int
) -> dict[str, float]:
    """The final validation velocity-MSE of a saved model, recomputed from its folder alone:
    the same scenes, (t, ε) and keys as during its training run, at both t distributions."""
    vae = pipe.vae
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    losses = {}
    for split, data in validation_scenes(seed).items():
        latents = (train_vae.encode_means(vae, data.images) - shift) * scale
        embeds, pooled = build.encode_captions(pipe, data.captions(), max_sequence_length)
        table = train_transformer.TextTable(embeds, pooled, null=-1)
        rows = train_transformer.LatentSet(latents, torch.arange(len(latents)))
        for mode in train_transformer.VAL_TIMESTEPS:
            key = train_transformer.val_key(split, mode)
            losses[key] = train_transformer.validate(pipe.transformer, rows, table, mode, seed)
    return losses


@dataclass(frozen=True)
class Sample:
    steps: int
    split: str
    seed: int
    scene: Scene
    reads: dict[str, str | None]

    def correct(self, attribute: str) -> bool:
        return self.reads[attribute] == str(getattr(self.scene, attribute))


def generate(
    pipe: StableDiffusion3Pipeline,
    prompts: Sequence[str],
    seed: int,
    steps: int,
    guidance_scale: float,
    max_sequence_length: int,
    batch_size: int,
) -> np.ndarray:
    """Float images (N, H, W, 3) in [0, 1]; image i uses generator seed ``seed`` (so a
    prompt's result does not depend on its batch)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        images = pipe(
            prompt=chunk,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=[torch.Generator().manual_seed(seed) for _ in chunk],
            max_sequence_length=max_sequence_length,
            output_type="np",
        ).images
        out.append(np.asarray(images))
    return np.concatenate(out)


def run_evaluation(
    pipe: StableDiffusion3Pipeline,
    *,
    step_counts: Sequence[int] = STEP_COUNTS,
    seeds: Sequence[int] = SEEDS,
    guidance_scale: float,
    max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    limit: int | None = None,
    batch_size: int = 30,
    sheet_dir: Path | None = None,
) -> list[Sample]:
    """Generate and analyse the evaluation set; ``limit`` keeps the first prompts per split
    (for smoke tests). With ``sheet_dir``, also writes one contact sheet per step count."""
    pipe.set_progress_bar_config(disable=True)
    sets = {k: v[:limit] for k, v in evaluation_scenes().items()}
    samples: list[Sample] = []
    jobs = [(n, split, seed) for n in step_counts for split in SPLITS for seed in seeds]
    sheets: dict[int, list[np.ndarray]] = {}
    for steps, split, seed in tqdm(jobs, desc="evaluate", unit="batch"):
        scenes = sets[split]
        images = generate(
            pipe,
            [caption(s) for s in scenes],
            seed,
            steps,
            guidance_scale,
            max_sequence_length,
            batch_size,
        )
        sheets.setdefault(steps, []).append(images)
        for scene, image in zip(scenes, images, strict=True):
            samples.append(Sample(steps, split, seed, scene, analyse(image).attributes()))
    if sheet_dir is not None:
        sheet_dir.mkdir(parents=True, exist_ok=True)
        for steps, rows in sheets.items():
            contact_sheet(rows).save(sheet_dir / f"eval_{steps:02d}_steps.png")
    return samples


@torch.no_grad()
def reconstruction_ceiling(
    vae: AutoencoderKL, limit: int | None = None
) -> dict[str, dict[str, float]]:
    """The analyser's accuracy on the VAE's reconstructions of the evaluation scenes, per split.

    The transformer can only make what the decoder can draw, so no sampler or transformer can
    score above this on the evaluation set.
    """
    table = {}
    for split, scenes in evaluation_scenes().items():
        scenes = scenes[:limit]
        recon = train_vae.reconstruct(vae, np.stack([render(s) for s in scenes]))
        table[split] = train_vae.read_accuracy(recon, scenes)
    return table


def format_ceiling(ceiling: dict[str, dict[str, float]]) -> str:
    lines = ["VAE reconstructions of the evaluation scenes (the ceiling)"]
    lines.append(f"{'split':<8}  " + "  ".join(f"{a:>10}" for a in ATTRIBUTES))
    for split, row in ceiling.items():
        lines.append(f"{split:<8}  " + "  ".join(f"{row[a]:>10.3f}" for a in ATTRIBUTES))
    return "\n".join(lines)


def contact_sheet(rows: list[np.ndarray], pad: int = 2) -> Image.Image:
    """One row per (split, seed) batch, one image per prompt."""
    n_cols = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    sheet = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            sheet[y : y + h, x : x + w] = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(sheet)


def summarise(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """Accuracy per attribute (and of all five at once) for each (steps, split)."""
    table: dict[str, dict[str, float]] = {}
    for steps in sorted({s.steps for s in samples}):
        for split in SPLITS:
            group = [s for s in samples if s.steps == steps and s.split == split]
            if not group:
                continue
            row = {a: float(np.mean([s.correct(a) for s in group])) for a in ATTRIBUTES}
            row["all"] = float(np.mean([all(s.correct(a) for a in ATTRIBUTES) for s in group]))
            row["n"] = float(len(group))
            table[f"{steps}/{split}"] = row
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    columns = [*ATTRIBUTES, "all"]
    lines = [f"{'steps':>5}  {'split':<8}  {'n':>4}  " + "  ".join(f"{c:>10}" for c in columns)]
    for key, row in table.items():
        steps, split = key.split("/")
        cells = "  ".join(f"{row[c]:>10.3f}" for c in columns)
        lines.append(f"{steps:>5}  {split:<8}  {int(row['n']):>4}  {cells}")
    return "\n".join(lines)


def load_pipeline(model_dir: Path) -> StableDiffusion3Pipeline:
    pipe = StableDiffusion3Pipeline.from_pretrained(model_dir, dtype=torch.float32)
    assert isinstance(pipe, StableDiffusion3Pipeline)
    return pipe


def format_comparison(
    reports: dict[str, dict[str, dict[str, float]]], val_losses: dict[str, dict[str, float]]
) -> str:
    """Two or more models' summaries side by side: one column per model under each attribute,
    then their validation losses."""
    names = list(reports)
    width = max(8, *(len(n) for n in names))
    columns = [*ATTRIBUTES, "all"]
    head = "  ".join(f"{c:^{len(names) * (width + 1) - 1}}" for c in columns)
    sub = "  ".join(" ".join(f"{n:>{width}}" for n in names) for _ in columns)
    lines = [f"{'':>5}  {'':<8}  {head}", f"{'steps':>5}  {'split':<8}  {sub}"]
    for key in reports[names[0]]:
        steps, split = key.split("/")
        cells = "  ".join(
            " ".join(f"{reports[n][key][c]:>{width}.3f}" for n in names) for c in columns
        )
        lines.append(f"{steps:>5}  {split:<8}  {cells}")
    lines += ["", "validation velocity-MSE (EMA weights; same scenes, t and noise for every model)"]
    lines.append(f"{'set':<28}  " + " ".join(f"{n:>{width}}" for n in names))
    for key in val_losses[names[0]]:
        values = " ".join(f"{val_losses[n][key]:>{width}.4f}" for n in names)
        lines.append(f"{key:<28}  {values}")
    return "\n".join(lines)


def format_losses(losses: dict[str, float]) -> str:
    lines = ["validation velocity-MSE (EMA weights)"]
    lines += [f"  {key:<28} {value:.4f}" for key, value in losses.items()]
    return "\n".join(lines)


def write_report(
    samples: Sequence[Sample],
    val_losses: dict[str, float],
    ceiling: dict[str, dict[str, float]],
    path: Path,
) -> None:
    records = [
        {
            "steps": s.steps,
            "split": s.split,
            "seed": s.seed,
            "prompt": caption(s.scene),
            "reads": s.reads,
        }
        for s in samples
    ]
    report = {
        "summary": summarise(samples),
        "validation_loss": val_losses,
        "vae_ceiling": ceiling,
        "samples": records,
    }
    path.write_text(json.dumps(report, indent=1))
