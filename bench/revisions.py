"""Two revisions of the serving path side by side: the same sync jobs through each, in turn.

On this shared 2-core machine the serving overhead of a 128²/8 job (about 6 ms) drifts by a
millisecond or more between runs of bench/overhead.py, so a change worth a few tenths of one
cannot be told from noise by comparing two runs. Here both revisions serve in the same run:

    --side api     two API processes, one of each revision, on one Redis and one worker (the
                   working tree's): a change to the API;
    --side worker  one API (the working tree's) and two workers, one of each revision, each on a
                   tiny model of its own: a change to the worker.

`--base REV` (default HEAD) is checked out into a temporary git worktree; each process of a
revision starts in its checkout and imports that checkout's packages. Requests go to the two
in turn, swapping which goes first, and each job's time outside its pipeline call (HTTP, the
API, the queue, START, encoding, FINISH and back) is compared pair by pair. Run it once on a
clean tree (`--base HEAD`, both sides the same code) to see the noise: a paired difference
within about 0.2 ms of zero is what two identical revisions give here.

    .venv/bin/python bench/revisions.py [--base REV] [--side api|worker] [--pairs 60]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common.settings import env_var
from service.dev import Stack, free_port, start_api, start_redis, start_worker, wait_until
from worker.tiny_model import build

REPO = Path(__file__).resolve().parent.parent
WARM_PAIRS = 6  # before timing: lazy initialisation, caches, the prompt embedding cache


@dataclass
class Side:
    """One revision's end of the comparison: where its requests go, and what they took."""

    label: str
    url: str
    model: str
    outside: list[float] = field(default_factory=list)  # seconds outside the pipeline call
    pipeline: list[float] = field(default_factory=list)
    connection: http.client.HTTPConnection = field(init=False)

    def __post_init__(self) -> None:
        address = httpx.URL(self.url)
        self.connection = http.client.HTTPConnection(address.host, address.port, timeout=120)

    def serve(self, side: int, steps: int) -> None:
        body = {"model": self.model, "prompt": "a small red circle", "seed": 1}
        body |= {"width": side, "height": side, "steps": steps}
        headers = {"Content-Type": "application/json", "Prefer": "wait=60"}
        started = time.perf_counter()
        self.connection.request("POST", "/v1/generate", json.dumps(body), headers)
        reply = self.connection.getresponse()
        text = reply.read()
        took = time.perf_counter() - started
        job = json.loads(text)
        if reply.status != 200 or job["status"] != "succeeded":
            raise SystemExit(f"{self.label}: the job did not finish: {reply.status} {text!r}")
        self.pipeline.append(job["timings"]["inference"])
        self.outside.append(took - job["timings"]["inference"])


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


def describe_working_tree() -> str:
    head = git("rev-parse", "--short", "HEAD")
    return f"{head} + uncommitted changes" if git("status", "--porcelain") else head


def quartiles(values: list[float]) -> str:
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{q1 * 1000:+.2f}..{q3 * 1000:+.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the revision to compare against")
    parser.add_argument("--side", choices=("api", "worker"), default="api")
    parser.add_argument("--pairs", type=int, default=60, help="timed pairs of requests")
    parser.add_argument("--size", type=int, default=128, help="image side, pixels")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    base_rev = git("rev-parse", "--short", args.base)
    work = Path(tempfile.mkdtemp(prefix="sd3serve-revisions-"))
    checkout = work / "base"
    git("worktree", "add", "--detach", str(checkout), base_rev)
    # Each process imports the packages of the directory it starts in; no other path may win.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        env_var("result_store"): f"file://{work / 'results'}",
        env_var("torch_dtype"): "float32",
        env_var("torch_threads"): "1",
        env_var("access_log"): "false",
        env_var("max_pixels"): str(args.size * args.size),
    }
    stack = Stack()
    try:
        env[env_var("redis_url")] = start_redis(stack, work, env)
        if args.side == "api":
            model = build(work / "model")
            start_worker(stack, env | {env_var("model"): str(model)}, "worker", REPO)
            urls = [start_api(stack, env, "127.0.0.1", free_port(), at) for at in (checkout, REPO)]
            names = [model.name, model.name]
        else:
            models = build(work / "base-model"), build(work / "working-model")
            revisions = (("base", checkout), ("working", REPO))
            for (label, at), model in zip(revisions, models, strict=True):
                start_worker(stack, env | {env_var("model"): str(model)}, label, at)
            urls = [start_api(stack, env, "127.0.0.1", free_port(), REPO)] * 2
            names = [model.name for model in models]
        base, new = Side("base", urls[0], names[0]), Side("working", urls[1], names[1])
        workers = 1 if args.side == "api" else 2
        wait_until(
            lambda: httpx.get(f"{base.url}/readyz").json()["workers"] >= workers,
            stack,
            "warm workers",
            300,
        )
        for _ in range(WARM_PAIRS):
            base.serve(args.size, args.steps)
            new.serve(args.size, args.steps)
        for side in (base, new):
            side.outside.clear()
            side.pipeline.clear()
        for pair in range(args.pairs):
            for side in (base, new) if pair % 2 == 0 else (new, base):
                side.serve(args.size, args.steps)
    finally:
        stack.stop()
        git("worktree", "remove", "--force", str(checkout))
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"{args.size}²/{args.steps}, {args.pairs} pairs, side {args.side}: base {base_rev} "
        f"against the working tree ({describe_working_tree()})"
    )
    for what, a, b in (
        ("outside the pipeline call", base.outside, new.outside),
        ("the pipeline call", base.pipeline, new.pipeline),
    ):
        differences = [y - x for x, y in zip(a, b, strict=True)]
        print(
            f"  {what}: base {statistics.median(a) * 1000:.2f} ms, working "
            f"{statistics.median(b) * 1000:.2f} ms, working / base "
            f"{statistics.median(b) / statistics.median(a):.3f}; paired difference "
            f"{statistics.median(differences) * 1000:+.2f} ms (quartiles {quartiles(differences)})"
        )


if __name__ == "__main__":
    main()
