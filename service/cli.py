"""The `sd3-serve` command: api, worker, dev, generate, build-model, keys."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# The key `sd3-serve generate` sends, where the API has keys (SD3SERVE_API_KEYS_FILE).
API_KEY_ENV = "SD3SERVE_API_KEY"


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from common.settings import load_settings
    from service.settings import ApiSettings

    settings = load_settings(ApiSettings)
    if settings.api_workers == 1:
        from service.app import create_app

        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_level="info",
            access_log=settings.access_log,
        )
        return 0
    from service.auth import load_key_ring
    from service.metrics import MULTIPROC_DIR_ENV

    # Each API process reads the keys file in create_app; checked here first, so that a bad one
    # stops the command with one line rather than each process with a traceback.
    load_key_ring(settings.api_keys_file, settings.rate_limit)

    # Each process writes its metrics to files here, summed by any scrape. A fresh folder per
    # start: samples left by an earlier run would be added to this one's.
    with tempfile.TemporaryDirectory(prefix="sd3serve-metrics-") as metrics_dir:
        os.environ[MULTIPROC_DIR_ENV] = metrics_dir
        uvicorn.run(
            "service.app:create_app",
            factory=True,
            workers=settings.api_workers,
            host=args.host,
            port=args.port,
            log_level="info",
            access_log=settings.access_log,
        )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from worker.entry import main  # needs the `worker` extra: torch and diffusers

    return main()


def _dev(args: argparse.Namespace) -> int:
    from service.dev import run_dev

    return run_dev(args.host, args.port, args.workers)


def _generate(args: argparse.Namespace) -> int:
    try:
        from service.client import ApiFailure, check_output, connect, generate, output_paths
    except ImportError as exc:  # the SDK is its own distribution, installed beside the service
        print(f"sd3-serve generate: {exc}; pip install ./clients/python", file=sys.stderr)
        return 2
    from sd3serve_client import GenerateOptions

    suffix = args.output.suffix.lower().lstrip(".")
    fmt = args.format or {"jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}.get(suffix, "png")
    options = GenerateOptions(
        model=args.model,
        negative_prompt=args.negative_prompt,
        width=args.width,
        height=args.height,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        num_images=args.num_images,
        output_format=fmt,
    )
    try:
        # From the environment only: an option's value would show in the process list.
        with connect(args.url, os.environ.get(API_KEY_ENV) or None) as client:
            # Before submitting: a job must not run for minutes only to find nowhere to go.
            for path in output_paths(args.output, args.num_images):
                check_output(path)
            paths = generate(client, args.prompt, options, args.output)
    except ApiFailure as exc:
        print(f"sd3-serve generate: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from service.auth import key_line, new_key

    key = new_key()
    try:
        line = key_line(args.name, key, args.rate)
    except ValueError as exc:
        print(f"sd3-serve keys create: {exc}", file=sys.stderr)
        return 2
    print(f"API key {args.name!r} (shown only this once; give it to its client as a secret):")
    print(f"  {key}")
    print("Add this line to the keys file (SD3SERVE_API_KEYS_FILE), then restart the API:")
    print(f"  {line}")
    return 0


def _build_model(args: argparse.Namespace) -> int:
    if args.arch is None:
        if args.random or args.no_t5:
            print("sd3-serve build-model: --random and --no-t5 go with --arch", file=sys.stderr)
            return 2
        from worker.tiny_model import build

        print(build(args.out))
        return 0
    if not args.random:
        # Said out loud, so that nobody takes the folder for the checkpoint it is shaped like.
        print(
            "sd3-serve build-model: --arch needs --random: only random weights are built here",
            file=sys.stderr,
        )
        return 2
    from worker.real_model import build as build_real

    print(build_real(args.arch, args.out, t5=not args.no_t5))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sd3-serve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    api = sub.add_parser("api", help="run the HTTP API (settings from the environment)")
    api.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    api.set_defaults(func=_api)

    worker = sub.add_parser("worker", help="run one GPU worker (settings from the environment)")
    worker.set_defaults(func=_worker)

    dev = sub.add_parser("dev", help="run Redis, the API and workers on the bundled model")
    dev.add_argument("--host", default="127.0.0.1", help="the API's address (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=8000, help="the API's port (default 8000)")
    dev.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    dev.set_defaults(func=_dev)

    gen = sub.add_parser(
        "generate",
        help="generate images through a running API",
        description=f"Generate images through a running API; ${API_KEY_ENV} is sent as its key.",
    )
    gen.add_argument("prompt", help="what to draw")
    gen.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("out.png"),
        help="image file; several images are written as NAME-0.EXT, NAME-1.EXT, ... "
        "(default: out.png; its suffix picks the format unless --format is given)",
    )
    gen.add_argument(
        "--url",
        default=os.environ.get("SD3SERVE_URL", "http://127.0.0.1:8000"),
        help="the API's base URL (default: $SD3SERVE_URL or http://127.0.0.1:8000)",
    )
    gen.add_argument("--model", help="model id from GET /v1/models (default: the service's)")
    gen.add_argument("--negative-prompt", help="what to steer away from")
    gen.add_argument("--width", type=int, help="pixels (default: the model's)")
    gen.add_argument("--height", type=int, help="pixels (default: the model's)")
    gen.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    gen.add_argument("--guidance-scale", type=float, help="default: the model's")
    gen.add_argument("--seed", type=int, help="image k uses seed + k (default: random)")
    gen.add_argument("-n", "--num-images", type=int, default=1, help="1..4 (default 1)")
    gen.add_argument(
        "--format", choices=["png", "jpeg", "webp"], default=None, help="image encoding"
    )
    gen.set_defaults(func=_generate)

    keys = sub.add_parser("keys", help="manage API keys (SD3SERVE_API_KEYS_FILE)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, help="what to do")
    create = keys_sub.add_parser(
        "create", help="make a new random API key and print it with its keys-file line"
    )
    create.add_argument("name", help="the key's name: 1 to 64 letters, digits, '.', '_' or '-'")
    create.add_argument(
        "--rate",
        help="its own rate limit, COUNT/second|minute|hour|day (default: SD3SERVE_RATE_LIMIT)",
    )
    create.set_defaults(func=_keys_create)

    build = sub.add_parser(
        "build-model",
        help="write a random tiny SD3 pipeline to a folder (fast; for tests and benchmarks)",
        description=(
            "Write a random SD3 pipeline to a folder: the tiny one (seconds, for tests), or with "
            "--arch --random a public checkpoint's exact architecture with random bfloat16 "
            "weights (minutes and GBs: for measuring load time, memory and speed)."
        ),
    )
    build.add_argument("out", type=Path, help="the folder to write")
    archs: tuple[str, ...] | None
    try:
        from worker.archs import ARCHS as archs  # torch-free; the API's image has no `worker`
    except ImportError:
        archs = None
    build.add_argument("--arch", choices=archs, help="the architecture of this public checkpoint")
    build.add_argument(
        "--random", action="store_true", help="random weights (with --arch; the only kind)"
    )
    build.add_argument("--no-t5", action="store_true", help="leave the T5-XXL encoder out")
    build.set_defaults(func=_build_model)
    return p


def main(argv: list[str] | None = None) -> int:
    from common.settings import SettingsError

    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:  # settings are checked at start: say which one is wrong
        print(f"sd3-serve {args.command}: {exc}", file=sys.stderr)
        return 2
    return code
