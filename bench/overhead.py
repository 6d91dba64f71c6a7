"""The serving overhead: a sync job through the whole service next to the same call in-process.

Starts a private stack (redis-server, the API, one worker on the random tiny SD3 of
worker/tiny_model.py), loads the same model in this process, and for each case alternates
    served: POST /v1/generate with `Prefer: wait=60` (HTTP, Redis, the queue, the worker's
            pipeline call with its progress reports, PNG encode, result store, and back), and
    direct: WarmPipeline.generate with the same parameters, in this process,
swapping which goes first on every run so neither always follows the other. Both load the model
in float32, so the only difference is the serving. Prints each median and served / direct
against issue 26's targets, then where the served time went: the job's own timings (its wait on
the queue, the pipeline call, encoding and storing the images, from acceptance to the final
state, and the rest of the worker's part: from START to the pipeline call, and from the images
stored to the final state) and the rest, HTTP and the API on both sides of the job; the spread
of the direct calls (the 10th to the 90th percentile), which bounds the difference a run can
resolve; and the serving's own cost: each served request's time outside its pipeline call
(all of the above but the call), its median over the direct median, plus one. That last figure
leaves out pipeline - direct: the same code in two processes, which on a shared 2-core machine
swings by ±30 ms from one run to the next (so served / direct does too), while the time
outside the call holds within a millisecond or two. It would also hide a served pipeline call
slower than the direct one for a reason of the service's own; pipeline - direct, over several
runs, is where that would show.

The served requests go out on the standard library's http.client over one kept-alive
connection: httpx spends about 0.8 ms of this machine's time on each request and its answer
(a GET /healthz answered in 1.35 ms through it, 0.55 ms through http.client), which is the
client's cost, not the service's.

    .venv/bin/python bench/overhead.py [--runs 20] [--torch-threads N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import torch

from common.contract import GenerateParams, OutputFormat
from common.settings import env_var
from service.dev import Stack, free_port, start_api, start_redis, start_worker, wait_until
from worker.pipeline import WarmPipeline
from worker.settings import WorkerSettings
from worker.tiny_model import build

# (side, steps, the most served / direct may be)
CASES = ((128, 8, 1.05), (256, 8, 1.02))
DTYPE: Final = "float32"
WARM_RUNS = 2  # of each path and case, before timing: lazy initialisation, caches


def params_for(model: str, side: int, steps: int) -> GenerateParams:
    return GenerateParams(
        model=model,
        prompt="a small red circle in the center on a white background",
        negative_prompt="",
        width=side,
        height=side,
        steps=steps,
        guidance_scale=4.5,
        seed=1,
        num_images=1,
        output_format=OutputFormat.png,
    )


@dataclass
class Case:
    side: int
    steps: int
    target: float  # the most served / direct may be
    served: list[float]  # seconds of each run
    direct: list[float]
    timings: list[dict[str, float]]  # each served job's own (its `timings`)


def timed(call: Callable[[], None]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each path and case")
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="CPU threads for torch on both paths (default: torch's own); 1 is steadier on a "
        "machine others share, where a thread of a team that waits for a core stalls the rest",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sd3serve-overhead-"))
    model = build(work / "model")
    largest = max(side for side, _, _ in CASES)
    env = dict(os.environ) | {
        env_var("model"): str(model),
        env_var("result_store"): f"file://{work / 'results'}",
        env_var("torch_dtype"): DTYPE,
        env_var("max_pixels"): str(largest * largest),
    }
    if args.torch_threads:
        env[env_var("torch_threads")] = str(args.torch_threads)
        torch.set_num_threads(args.torch_threads)
    stack = Stack()
    results = []
    try:
        env[env_var("redis_url")] = start_redis(stack, work, env)
        start_worker(stack, env, "bench-worker")
        url = start_api(stack, env, "127.0.0.1", free_port())
        client = httpx.Client(base_url=url, timeout=120)
        address = httpx.URL(url)
        connection = http.client.HTTPConnection(address.host, address.port, timeout=120)
        wait_until(
            lambda: client.get("/readyz").json()["workers"] >= 1, stack, "a warm worker", 300
        )
        direct = WarmPipeline(WorkerSettings(model=str(model), torch_dtype=DTYPE))
        direct.warm_up()

        for side, steps, target in CASES:
            params = params_for(model.name, side, steps)
            body = params.model_dump(mode="json")
            timings: list[dict[str, float]] = []

            def serve(
                body: dict[str, object] = body, timings: list[dict[str, float]] = timings
            ) -> None:
                connection.request(
                    "POST",
                    "/v1/generate",
                    json.dumps(body),
                    {"Content-Type": "application/json", "Prefer": "wait=60"},
                )
                reply = connection.getresponse()
                text = reply.read()
                job = json.loads(text)
                if reply.status != 200 or job["status"] != "succeeded":
                    raise SystemExit(f"request did not finish: {reply.status} {text!r}")
                timings.append(job["timings"])

            def call(params: GenerateParams = params) -> None:
                direct.generate(params)

            for _ in range(WARM_RUNS):
                serve()
                call()
            timings.clear()
            served, bare = [], []
            for run in range(args.runs):
                if run % 2:
                    bare.append(timed(call))
                    served.append(timed(serve))
                else:
                    served.append(timed(serve))
                    bare.append(timed(call))
            results.append(Case(side, steps, target, served, bare, timings))
        client.close()
        connection.close()
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)

    threads = args.torch_threads or torch.get_num_threads()
    print(f"tiny SD3, {DTYPE}, {threads} torch threads, {args.runs} runs of each, alternating:")
    print("  case      served median  direct median  served/direct  target")
    for case in results:
        a, b = statistics.median(case.served), statistics.median(case.direct)
        verdict = "met" if a / b <= case.target else "missed"
        print(
            f"  {case.side}²/{case.steps:<3} {a * 1000:10.1f} ms  {b * 1000:10.1f} ms"
            f"   {a / b:5.3f} ({(a - b) * 1000:+.1f} ms)  ≤ {case.target:.2f} {verdict}"
        )
    print("where the served time went (medians, ms):")
    print(
        "  case      queue wait  encode+store  rest of job  HTTP+API  outside the call"
        "  pipeline - direct  direct p10..p90  serving's own"
    )
    for case in results:
        ms = {k: statistics.median(t[k] for t in case.timings) * 1000 for k in case.timings[0]}
        rest_of_job = statistics.median(
            t["total"] - t["queue_wait"] - t["inference"] - t["encode"] for t in case.timings
        )
        http_api = statistics.median(
            served - t["total"] for served, t in zip(case.served, case.timings, strict=True)
        )
        outside = statistics.median(
            served - t["inference"] for served, t in zip(case.served, case.timings, strict=True)
        )
        direct_ms = statistics.median(case.direct) * 1000
        deciles = statistics.quantiles(case.direct, n=10)
        own = 1 + outside * 1000 / direct_ms
        print(
            f"  {case.side}²/{case.steps:<3} {ms['queue_wait']:10.1f} {ms['encode']:13.1f}"
            f" {rest_of_job * 1000:12.1f} {http_api * 1000:9.1f} {outside * 1000:17.1f}"
            f" {ms['inference'] - direct_ms:18.1f}"
            f"  {deciles[0] * 1000:.0f}..{deciles[-1] * 1000:.0f}{own:15.3f}"
        )


if __name__ == "__main__":
    main()
