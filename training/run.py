"""The whole reproduction, stage by stage (driven by ``python -m training all``).

build → VAE → latents and caption embeddings → transformer → pipeline folder + artefacts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import StableDiffusion3Pipeline

from training import build, evaluate, plot, scenes, train_transformer, train_vae

MAX_MODEL_BYTES = 20 * 1024 * 1024
GUIDANCE_SCALE = 5.0  # for the sample sheet, the default evaluation and training.json; untuned
VAL_SEEN, VAL_HELD_OUT = 128, 128


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_has_amx_bf16() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def vae_stage(
    pipe: StableDiffusion3Pipeline, data: scenes.SceneSet, args: argparse.Namespace, work: Path
) -> dict[str, object]:
    """Train the VAE (or reload it with ``--reuse-vae``); returns the log record."""
    vae_dir = work / "vae"
    if args.reuse_vae and vae_dir.exists():
        pipe.vae = type(pipe.vae).from_pretrained(vae_dir)
        return {"reused": str(vae_dir)}
    bf16 = args.vae_precision == "bf16" or (args.vae_precision == "auto" and cpu_has_amx_bf16())
    cfg = train_vae.VaeConfig(
        steps=args.vae_steps, batch_size=args.vae_batch, lr=args.vae_lr, bf16=bf16, seed=args.seed
    )
    t0 = time.perf_counter()
    losses = train_vae.train_vae(pipe.vae, data, cfg)
    plot.line_plot(
        {"weighted L1": (range(len(losses)), plot.smooth(losses, 25))},
        work / "loss_vae.png",
        "VAE reconstruction loss (object pixels x20), moving average of 25 steps",
    )
    return {"config": asdict(cfg), "final_l1": losses[-1], "seconds": time.perf_counter() - t0}


def caption_tables(
    pipe: StableDiffusion3Pipeline, captions: list[str], lengths: set[int]
) -> tuple[dict[str, int], dict[int, train_transformer.TextTable]]:
    """Row of each distinct caption, and its embeddings at each T5 length (+ the empty
    prompt, used for CFG dropout, as the last row)."""
    distinct = sorted(set(captions))
    rows = {c: i for i, c in enumerate(distinct)}
    tables = {}
    for length in sorted(lengths):
        embeds, pooled = build.encode_captions(pipe, [*distinct, ""], length)
        tables[length] = train_transformer.TextTable(embeds, pooled, null=len(distinct))
    return rows, tables


def sample_sheet(pipe: StableDiffusion3Pipeline, max_sequence_length: int, path: Path) -> None:
    """15 seen and 15 held-out evaluation prompts at 28 steps, seed 0: a first visual check."""
    pipe.set_progress_bar_config(disable=True)
    rows = [
        evaluate.generate(
            pipe,
            [scenes.caption(s) for s in split[:15]],
            seed=0,
            steps=28,
            guidance_scale=GUIDANCE_SCALE,
            max_sequence_length=max_sequence_length,
            batch_size=15,
        )
        for split in evaluate.evaluation_scenes().values()
    ]
    evaluate.contact_sheet(rows).save(path)


def run_all(args: argparse.Namespace) -> None:
    out: Path = args.out
    work: Path = args.work or out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    record: dict[str, object] = {"args": {k: str(v) for k, v in vars(args).items()}}

    pipe = build.build_pipeline(args.seed, shift=args.shift)
    data = scenes.make_scene_set(args.scenes, args.seed)
    val_data = {
        "seen": scenes.make_scene_set(VAL_SEEN, args.seed + 1000),
        "held-out": scenes.make_scene_set(VAL_HELD_OUT, args.seed + 2000, held_out=True),
    }
    log(f"rendered {len(data.scenes)} training scenes")

    record["vae"] = vae_stage(pipe, data, args, work)
    reports = {k: train_vae.reconstruction_report(pipe.vae, v) for k, v in val_data.items()}
    record["vae_reconstruction"] = reports
    log(f"VAE reconstructions: {json.dumps(reports)}")

    # Latents: posterior means, normalised with statistics measured on the training set.
    t0 = time.perf_counter()
    raw = train_vae.encode_means(pipe.vae, data.images)
    shift, scale = train_vae.latent_stats(raw)
    train_vae.set_latent_stats(pipe.vae, shift, scale)
    pipe.vae.save_pretrained(work / "vae")
    val_raw = {k: train_vae.encode_means(pipe.vae, v.images) for k, v in val_data.items()}
    lengths = {args.max_sequence_length} | ({args.short_length} if args.short_length else set())
    all_captions = [c for d in (data, *val_data.values()) for c in d.captions()]
    rows, tables = caption_tables(pipe, all_captions, lengths)
    record["latents"] = {
        "shift_factor": shift,
        "scaling_factor": scale,
        "distinct_captions": len(rows),
        "seconds": time.perf_counter() - t0,
    }

    def latent_set(latents: torch.Tensor, d: scenes.SceneSet) -> train_transformer.LatentSet:
        ids = torch.tensor([rows[c] for c in d.captions()], dtype=torch.int64)
        return train_transformer.LatentSet((latents - shift) * scale, ids)

    dit_cfg = train_transformer.DitConfig(
        steps=args.dit_steps,
        batch_size=args.dit_batch,
        lr=args.dit_lr,
        ema_decay=args.ema_decay,
        cfg_drop=args.cfg_drop,
        timesteps=args.timesteps,
        shift=args.shift,
        short_length=args.short_length,
        short_fraction=args.short_fraction,
        val_every=args.val_every,
        seed=args.seed,
    )
    ema, history = train_transformer.train_transformer(
        pipe.transformer,
        latent_set(raw, data),
        tables,
        args.max_sequence_length,
        {k: latent_set(val_raw[k], v) for k, v in val_data.items()},
        dit_cfg,
        on_val=lambda step, scores: log(f"\nstep {step}: val velocity MSE {scores}"),
    )
    pipe.transformer = ema
    record["transformer"] = {
        "config": asdict(dit_cfg),
        "seconds": history.seconds,
        "final_val": {k: v[-1] for k, v in history.val.items()},
    }
    record["history"] = asdict(history)

    build.save_pipeline(pipe, out)
    # Ignored by from_pretrained; tells the service how the model was trained to be called.
    hints = {
        "max_sequence_length": args.max_sequence_length,
        "height": scenes.IMAGE_SIZE,
        "width": scenes.IMAGE_SIZE,
        "guidance_scale": GUIDANCE_SCALE,
        "timesteps": args.timesteps,
        "shift": args.shift,
        "seed": args.seed,
    }
    (out / "training.json").write_text(json.dumps(hints, indent=1) + "\n")
    size = folder_bytes(out)
    record["model_bytes"] = size

    plot.line_plot(
        {
            "train (avg of 50)": (history.step, plot.smooth(history.loss, 50)),
            **{f"val {k} (EMA)": (history.val_step, v) for k, v in history.val.items()},
        },
        work / "loss_transformer.png",
        f"Transformer velocity MSE ({args.timesteps} timesteps)",
    )
    sample_sheet(pipe, args.max_sequence_length, work / "samples_28_steps.png")
    record["total_seconds"] = total = time.perf_counter() - started
    (work / "log.json").write_text(json.dumps(record, indent=1))
    log(f"wrote {out} ({size / 2**20:.1f} MiB) and artefacts in {work} in {total:.0f} s")
    if size > MAX_MODEL_BYTES:
        log(f"WARNING: the pipeline folder exceeds {MAX_MODEL_BYTES // 2**20} MiB")
