"""End-to-end latency of a synchronous request next to the bare pipeline call, in one run.

Starts a private stack (redis-server, the API, one worker on a random tiny SD3), then alternates
    A: POST /v1/generate with `Prefer: wait=60` (queue, worker, PNG encode, store, HTTP), and
    B: the same pipeline call made directly in this process,
and prints the median of each and their ratio: the serving overhead.

    .venv/bin/python bench/e2e_latency.py [--runs 20] [--size 128] [--steps 8]
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

from common.contract import GenerateParams, OutputFormat
from common.settings import env_var
from service.dev import Stack, free_port, start_api, start_redis, start_worker, wait_until
from worker.pipeline import WarmPipeline
from worker.settings import WorkerSettings
from worker.tiny_model import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sd3serve-bench-"))
    model = build(work / "model")
    env = dict(os.environ) | {
        env_var("model"): str(model),
        env_var("result_store"): f"file://{work / 'results'}",
    }
    params = GenerateParams(
        model=model.name,
        prompt="a small red circle in the center on a white background",
        negative_prompt="",
        width=args.size,
        height=args.size,
        steps=args.steps,
        guidance_scale=4.5,
        seed=1,
        num_images=1,
        output_format=OutputFormat.png,
    )
    body = params.model_dump(mode="json")

    stack = Stack()
    try:
        env[env_var("redis_url")] = start_redis(stack, work, env)
        start_worker(stack, env, "bench-worker")
        url = start_api(stack, env, "127.0.0.1", free_port())
        client = httpx.Client(base_url=url, timeout=120)
        wait_until(
            lambda: client.get("/readyz").json()["workers"] >= 1, stack, "a warm worker", 300
        )
        direct = WarmPipeline(WorkerSettings(model=str(model), torch_dtype="float32"))
        direct.warm_up()

        served, bare = [], []
        for _ in range(2):  # warm both paths before timing
            client.post("/v1/generate", json=body, headers={"Prefer": "wait=60"})
            direct.generate(params)
        for _ in range(args.runs):
            started = time.perf_counter()
            reply = client.post("/v1/generate", json=body, headers={"Prefer": "wait=60"})
            served.append(time.perf_counter() - started)
            if reply.status_code != 200 or reply.json()["status"] != "succeeded":
                raise SystemExit(f"request did not finish: {reply.status_code} {reply.text}")
            started = time.perf_counter()
            direct.generate(params)
            bare.append(time.perf_counter() - started)
        client.close()
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)

    a, b = statistics.median(served), statistics.median(bare)
    print(f"{args.size}x{args.size}, {args.steps} steps, {args.runs} runs each, alternating")
    print(f"  A  sync HTTP request (Prefer: wait=60), median: {a * 1000:8.1f} ms")
    print(f"  B  direct pipeline call,               median: {b * 1000:8.1f} ms")
    print(f"  A / B = {a / b:.2f}   (overhead A - B = {(a - b) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
