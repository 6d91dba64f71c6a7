"""Command line: ``python -m training all --out DIR --seed 0``,
``python -m training evaluate MODEL_DIR --report REPORT_DIR``,
``python -m training probe MODEL_DIR`` and
``python -m training compare NAME=REPORT_DIR/evaluation.json ...``.

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

from common.contract import PIPELINE_MAX_SEQUENCE_LENGTH, ServingDefaults
from training import bench, build, evaluate, probe, run, train_transformer, train_vae


def setup_torch(threads: int, device: str = "cpu") -> None:
    torch.set_num_threads(threads)
    if device.startswith("cuda"):
        # cuBLAS is deterministic only with a fixed workspace (read when CUDA starts).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Same seed, same machine, same thread count → same weights. Some CUDA kernels have no
    # deterministic variant; GPU runs are for exploring recipes, so they only warn there.
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")


def fraction(value: str) -> float:
    """A probability or share, refused at parse time when outside [0, 1]."""
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1")
    return number


def non_negative(value: str) -> int:
    """A count of pixels, refused at parse time when negative."""
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return number


def positive(value: str) -> int:
    """A size of the model, refused at parse time unless at least 1."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return number


def at_least_one(value: str) -> float:
    """A loss weight relative to the rest, refused at parse time under 1."""
    number = float(value)
    if not number >= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{value} is under 1")
    return number


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    al = sub.add_parser("all", help="train VAE and transformer, write the pipeline folder")
    al.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    al.add_argument("--work", type=Path, help="artefact folder (default <out>.work)")
    al.add_argument("--seed", type=int, default=0)
    al.add_argument(
        "--device",
        default="cpu",
        help="torch device for the VAE and the transformer (e.g. cuda); the shipped weights "
        "are the CPU run's",
    )
    al.add_argument("--patch-size", type=positive, default=build.Dims.patch_size)
    al.add_argument("--layers", type=positive, default=build.Dims.layers)
    al.add_argument("--heads", type=positive, default=build.Dims.heads)
    al.add_argument("--head-dim", type=positive, default=build.Dims.head_dim)
    al.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    al.add_argument("--scenes", type=int, default=16384, help="training scenes (and latents)")
    al.add_argument(
        "--vae-channels",
        type=lambda v: tuple(int(c) for c in v.split(",")),
        default=build.Dims.vae_channels,
        help="VAE block widths, comma-separated; each block after the first halves the side "
        "(default 32,64,64: scale factor 4)",
    )
    al.add_argument("--vae-steps", type=int, default=train_vae.VaeConfig.steps)
    al.add_argument("--vae-batch", type=int, default=train_vae.VaeConfig.batch_size)
    al.add_argument("--vae-lr", type=float, default=train_vae.VaeConfig.lr)
    al.add_argument(
        "--vae-seed",
        type=int,
        help="seed of the VAE's batch order and posterior noise alone (default: --seed); the "
        "scenes and every initialisation stay --seed's, to tell one VAE draw from another",
    )
    al.add_argument(
        "--vae-recolour",
        type=fraction,
        default=train_vae.VaeConfig.recolour,
        help="fraction of VAE training images drawn with a random object colour",
    )
    al.add_argument(
        "--vae-object-margin",
        type=non_negative,
        default=train_vae.VaeConfig.object_margin,
        help="pixels around the object weighted like the object in the VAE loss",
    )
    al.add_argument(
        "--vae-precision",
        choices=["auto", "bf16", "fp32"],
        default="fp32",
        help="VAE training precision; fp32 reproduces the shipped VAE, auto = bf16 autocast "
        "where the CPU has AMX or AVX512-BF16 (1.6-1.7x faster, a different VAE)",
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
    al.add_argument(
        "--shift",
        type=float,
        default=train_transformer.DitConfig.shift,
        help="timestep shift (scheduler too)",
    )
    al.add_argument(
        "--colourless",
        type=fraction,
        default=run.COLOURLESS_FRACTION,
        help="extra transformer training scenes, as a fraction of --scenes: objects in random "
        "colours, captions without the colour",
    )
    al.add_argument(
        "--flow-object-weight",
        type=at_least_one,
        default=train_transformer.DitConfig.object_weight,
        help="weight of the latent cells around the object in the transformer loss "
        "(1: the paper's plain MSE)",
    )
    al.add_argument("--cfg-drop", type=fraction, default=train_transformer.DitConfig.cfg_drop)
    al.add_argument(
        "--encoder-drop",
        type=fraction,
        default=train_transformer.DitConfig.encoder_drop,
        help="probability of dropping each text encoder independently, as SD3 (0.463)",
    )
    al.add_argument(
        "--zero-pooled",
        action="store_true",
        help="experiment: zero the CLIP projections, so adaLN gets no caption (see docs)",
    )
    al.add_argument("--ema-decay", type=float, default=train_transformer.DitConfig.ema_decay)
    al.add_argument(
        "--max-sequence-length",
        type=int,
        default=build.MAX_SEQUENCE_LENGTH,
        help="T5 length trained for (the pipeline's default is 256)",
    )
    al.add_argument("--val-every", type=int, default=train_transformer.DitConfig.val_every)
    al.add_argument(
        "--sample-every",
        type=int,
        default=0,
        help="also generate the 60 evaluation prompts (28 steps, seed 0) with the EMA weights at "
        "validations that fall on multiples of N steps and log their shape accuracy (off: 0)",
    )
    al.add_argument(
        "--sample-limit",
        type=positive,
        help="first N prompts per split in those samples and in the sample sheet (smoke tests; "
        "default: all 30, and 15 in the sheet)",
    )

    # What evaluate and probe share: a model folder and how to sample from it.
    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument("model_dir", type=Path)
    sampling.add_argument("--seeds", type=int, nargs="+", default=list(evaluate.SEEDS))
    sampling.add_argument(
        "--guidance", type=float, help=f"default: the model's, else {run.GUIDANCE_SCALE}"
    )
    sampling.add_argument("--threads", type=int, default=os.cpu_count() or 1)

    ev = sub.add_parser(
        "evaluate", parents=[sampling], help="attribute accuracy of a pipeline folder"
    )
    ev.add_argument("--steps", type=int, nargs="+", default=list(evaluate.STEP_COUNTS))
    ev.add_argument("--max-sequence-length", type=int, help="default: the model's, else 256")
    ev.add_argument("--limit", type=int, help="first N prompts per split (smoke tests)")
    ev.add_argument("--report", type=Path, help="folder for contact sheets and a JSON report")
    ev.add_argument("--device", default="cpu")
    pr = sub.add_parser(
        "probe",
        parents=[sampling],
        help="which part of the text conditioning decides the shape (swap test)",
    )
    pr.add_argument("--steps", type=int, default=run.DEFAULT_STEPS)
    cp = sub.add_parser("compare", help="evaluation reports side by side")
    cp.add_argument(
        "reports", nargs="+", metavar="NAME=REPORT", help="evaluation.json of each model"
    )
    bn = sub.add_parser("bench", help="measure seconds per step of each stage")
    bn.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    bn.add_argument("--repeats", type=int, default=5)
    bn.add_argument("--dit-batch", type=int, default=train_transformer.DitConfig.batch_size)
    bn.add_argument("--vae-batch", type=int, default=train_vae.VaeConfig.batch_size)
    return parser.parse_args(argv)


def call_settings(model_dir: Path, guidance: float | None, length: int | None) -> tuple[float, int]:
    """Guidance and T5 length as given, else as the worker would call the model: with the
    defaults its folder declares."""
    defaults = ServingDefaults.load(model_dir)
    # Each falls back in turn: given, declared, our own default. `is None`, not `or`:
    # guidance 0 is a legitimate request.
    if guidance is None:
        guidance = defaults.default_guidance_scale
    if guidance is None:
        guidance = run.GUIDANCE_SCALE
    if length is None:
        length = defaults.max_sequence_length
    if length is None:
        length = PIPELINE_MAX_SEQUENCE_LENGTH
    return float(guidance), int(length)


def run_evaluate(args: argparse.Namespace) -> None:
    setup_torch(args.threads, args.device)
    pipe = evaluate.load_pipeline(args.model_dir).to(args.device)
    guidance, length = call_settings(args.model_dir, args.guidance, args.max_sequence_length)
    samples = evaluate.run_evaluation(
        pipe,
        step_counts=args.steps,
        seeds=args.seeds,
        guidance_scale=guidance,
        max_sequence_length=length,
        limit=args.limit,
        sheet_dir=args.report,
    )
    trained = json.loads((args.model_dir / "training.json").read_text())
    losses = evaluate.validation_loss(pipe, int(trained["seed"]), length)
    ceiling = evaluate.reconstruction_ceiling(pipe.vae, args.limit)
    if args.report is not None:
        evaluate.write_report(samples, losses, ceiling, args.report / "evaluation.json")
    print(evaluate.format_table(evaluate.summarise(samples)))
    print(evaluate.format_ceiling(ceiling))
    print(evaluate.format_losses(losses))


def run_compare(args: argparse.Namespace) -> None:
    reports = {}
    for item in args.reports:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=REPORT, got {item!r}")
        reports[name] = json.loads(Path(path).read_text())
    print(
        evaluate.format_comparison(
            {n: r["summary"] for n, r in reports.items()},
            {n: r["validation_loss"] for n, r in reports.items()},
        )
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "all":
        setup_torch(args.threads, args.device)
        run.run_all(args)
    elif args.command == "evaluate":
        run_evaluate(args)
    elif args.command == "probe":
        setup_torch(args.threads)
        guidance, length = call_settings(args.model_dir, args.guidance, None)
        pipe = evaluate.load_pipeline(args.model_dir)
        print(probe.format_mixing(probe.caption_mixing(pipe, length)), end="\n\n")
        swaps = probe.conditioning_swap(
            pipe,
            steps=args.steps,
            seeds=args.seeds,
            guidance_scale=guidance,
            max_sequence_length=length,
        )
        print(probe.format_swaps(swaps))
    elif args.command == "compare":
        run_compare(args)
    else:
        setup_torch(args.threads)
        results = bench.run(args.vae_batch, args.dit_batch, repeats=args.repeats)
        print(json.dumps({"threads": args.threads, **results}, indent=1))


if __name__ == "__main__":
    main()
