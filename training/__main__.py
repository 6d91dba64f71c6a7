"""Command line: ``python -m training all --out DIR --seed 0`` and
``python -m training evaluate MODEL_DIR``.

``all`` builds the untrained components, trains the VAE, measures its latent statistics,
caches latents and caption embeddings, trains the transformer and writes the pipeline with
``save_pretrained``. Intermediate artefacts (the VAE, loss curves, a JSON log, sample
sheets) go to ``--work`` (default: ``<out>.work``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

# No download may ever happen: every component is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # imported after the environment is set

from training import bench, build, evaluate, run, train_transformer, train_vae


def setup_torch(threads: int) -> None:
    torch.set_num_threads(threads)
    # Same seed, same machine, same thread count → same weights.
    torch.use_deterministic_algorithms(True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    al = sub.add_parser("all", help="train VAE and transformer, write the pipeline folder")
    al.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    al.add_argument("--work", type=Path, help="artefact folder (default <out>.work)")
    al.add_argument("--seed", type=int, default=0)
    al.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    al.add_argument("--scenes", type=int, default=16384, help="training scenes (and latents)")
    al.add_argument("--vae-steps", type=int, default=train_vae.VaeConfig.steps)
    al.add_argument("--vae-batch", type=int, default=train_vae.VaeConfig.batch_size)
    al.add_argument("--vae-lr", type=float, default=train_vae.VaeConfig.lr)
    al.add_argument(
        "--vae-precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="autocast for VAE training; auto = bf16 where the CPU has AMX",
    )
    al.add_argument(
        "--reuse-vae",
        action="store_true",
        help="load <work>/vae from an earlier run instead of training it",
    )
    al.add_argument("--dit-steps", type=int, default=train_transformer.DitConfig.steps)
    al.add_argument("--dit-batch", type=int, default=train_transformer.DitConfig.batch_size)
    al.add_argument("--dit-lr", type=float, default=train_transformer.DitConfig.lr)
    al.add_argument("--timesteps", choices=["logit-normal", "uniform"], default="logit-normal")
    al.add_argument("--shift", type=float, default=1.0, help="timestep shift (scheduler too)")
    al.add_argument("--cfg-drop", type=float, default=train_transformer.DitConfig.cfg_drop)
    al.add_argument("--ema-decay", type=float, default=train_transformer.DitConfig.ema_decay)
    al.add_argument(
        "--max-sequence-length",
        type=int,
        default=build.MAX_SEQUENCE_LENGTH,
        help="T5 length trained for (the pipeline's default is 256)",
    )
    al.add_argument(
        "--short-length",
        type=int,
        default=train_transformer.DitConfig.short_length,
        help="T5 length for the cheap fraction of steps (0: off)",
    )
    al.add_argument(
        "--short-fraction", type=float, default=train_transformer.DitConfig.short_fraction
    )
    al.add_argument("--val-every", type=int, default=train_transformer.DitConfig.val_every)

    ev = sub.add_parser("evaluate", help="attribute accuracy of a pipeline folder")
    ev.add_argument("model_dir", type=Path)
    ev.add_argument("--steps", type=int, nargs="+", default=list(evaluate.STEP_COUNTS))
    ev.add_argument("--seeds", type=int, nargs="+", default=list(evaluate.SEEDS))
    ev.add_argument("--guidance", type=float, default=run.GUIDANCE_SCALE)
    ev.add_argument("--max-sequence-length", type=int, default=build.MAX_SEQUENCE_LENGTH)
    ev.add_argument("--limit", type=int, help="first N prompts per split (smoke tests)")
    ev.add_argument("--report", type=Path, help="folder for contact sheets and a JSON report")
    ev.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    bn = sub.add_parser("bench", help="measure seconds per step of each stage")
    bn.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    bn.add_argument("--repeats", type=int, default=5)
    bn.add_argument("--dit-batch", type=int, default=train_transformer.DitConfig.batch_size)
    bn.add_argument("--vae-batch", type=int, default=train_vae.VaeConfig.batch_size)
    return parser.parse_args(argv)


def run_evaluate(args: argparse.Namespace) -> None:
    setup_torch(args.threads)
    pipe = evaluate.load_pipeline(args.model_dir)
    samples = evaluate.run_evaluation(
        pipe,
        step_counts=args.steps,
        seeds=args.seeds,
        guidance_scale=args.guidance,
        max_sequence_length=args.max_sequence_length,
        limit=args.limit,
        sheet_dir=args.report,
    )
    if args.report is not None:
        evaluate.write_report(samples, args.report / "evaluation.json")
    print(evaluate.format_table(evaluate.summarise(samples)))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "all":
        setup_torch(args.threads)
        run.run_all(args)
    elif args.command == "evaluate":
        run_evaluate(args)
    else:
        setup_torch(args.threads)
        results = bench.run(args.vae_batch, args.dit_batch, repeats=args.repeats)
        print(json.dumps({"threads": args.threads, **results}, indent=1))


if __name__ == "__main__":
    main()
