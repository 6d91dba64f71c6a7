"""Jobs per second with cross-job batching next to without, in one run.

Starts a private stack: redis-server, the API, and two workers on the same random tiny SD3
under two model names, one with SD3SERVE_MAX_BATCH=1 (every job alone) and one with
SD3SERVE_MAX_BATCH=4. Rounds alternate between them: each round queues `--jobs` jobs of the
same shape (different prompts and seeds) at once, and times from the first POST until the last
job has succeeded. Prints the median jobs/s of each and their ratio.

    .venv/bin/python bench/batching.py [--rounds 3] [--jobs 16] [--size 64] [--steps 28]
        [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from common.settings import env_var
from service.dev import Stack, free_port, start_api, start_redis, start_worker, wait_until
from worker.tiny_model import build

BATCHES = {"alone": 1, "batched": 4}


def drain(client: httpx.Client, model: str, jobs: int, size: int, steps: int) -> float:
    """Seconds from queuing `jobs` jobs at once to the last one's success."""
    started = time.perf_counter()
    ids = []
    for k in range(jobs):
        body = {
            "model": model,
            "prompt": f"a small red circle, variant {k}",
            "width": size,
            "height": size,
            "steps": steps,
            "seed": k,
        }
        reply = client.post("/v1/generate", json=body)
        if reply.status_code != 202:
            raise SystemExit(f"not accepted: {reply.status_code} {reply.text}")
        ids.append(reply.json()["id"])
    pending = list(ids)
    while pending:
        status = client.get(f"/v1/jobs/{pending[0]}").json()["status"]
        if status == "succeeded":
            pending.pop(0)
        elif status in ("failed", "canceled"):
            raise SystemExit(f"job {pending[0]} {status}")
        else:
            time.sleep(0.02)  # a poll, not the measurement: jobs take far longer
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sd3serve-bench-"))
    model = build(work / "model")
    env = dict(os.environ) | {
        env_var("model"): str(model),
        env_var("result_store"): f"file://{work / 'results'}",
        env_var("max_queued_jobs_per_key"): "10000",
        # Named, not `auto`, which picks bfloat16 on a CPU that has it natively: figures from
        # different machines stay comparable.
        env_var("torch_dtype"): args.dtype,
    }
    stack = Stack()
    seconds: dict[str, list[float]] = {name: [] for name in BATCHES}
    try:
        env[env_var("redis_url")] = start_redis(stack, work, env)
        for name, size in BATCHES.items():
            worker_env = env | {env_var("model_name"): name, env_var("max_batch"): str(size)}
            start_worker(stack, worker_env, f"bench-{name}")
        url = start_api(stack, env, "127.0.0.1", free_port())
        client = httpx.Client(base_url=url, timeout=120)
        wait_until(
            lambda: client.get("/readyz").json()["workers"] >= len(BATCHES),
            stack,
            "warm workers",
            300,
        )
        for name in BATCHES:  # warm both paths before timing
            drain(client, name, 2, args.size, args.steps)
        for _ in range(args.rounds):
            for name in BATCHES:
                seconds[name].append(drain(client, name, args.jobs, args.size, args.steps))
        client.close()
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)

    rate = {name: args.jobs / statistics.median(times) for name, times in seconds.items()}
    print(
        f"{args.size}x{args.size}, {args.steps} steps, {args.dtype}, {args.jobs} jobs queued at "
        f"once, {args.rounds} rounds each, alternating"
    )
    for name, size in BATCHES.items():
        print(f"  SD3SERVE_MAX_BATCH={size}: median {rate[name]:6.2f} jobs/s")
    print(f"  batched / alone = {rate['batched'] / rate['alone']:.2f}x jobs/s")


if __name__ == "__main__":
    main()
