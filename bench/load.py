"""Open-loop mixed load on the API: latency per route and every error, at a fixed request rate.

Requests start at fixed times, `--rate` a second for `--seconds`, whether or not earlier ones
have been answered (open loop: a slow server meets the same load, not a politer one), and each
latency is counted from the request's scheduled time. The mix (`--mix`, weights):

    submit  POST /v1/generate (a small job)
    poll    GET /v1/jobs/{id} of a job submitted earlier
    sse     GET /v1/jobs/{id}/events of a job submitted earlier, read to its final state
            (its latency is to the first event; the time to the final one is printed besides)
    image   GET /v1/jobs/{id}/images/0 of a job seen succeeded

It prints p50 and p99 per route and the answers by status. Without `--url` it starts its own
stack on loopback (redis-server, the API, `--workers` workers on the tiny model, their output in
a log file) with SD3SERVE_MAX_QUEUED_JOBS at `--max-queued-jobs`. Above capacity the only
errors allowed are 429s with a `Retry-After`: the bench checks it and exits 1 on any other.

    .venv/bin/python bench/load.py [--seconds 60] [--rate 20] [--workers 1]
        [--max-queued-jobs 20] [--steps 4] [--mix submit=4,poll=3,sse=2,image=1]
        [--url URL [--key KEY]]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from httpx_sse import aconnect_sse

from common.settings import env_var
from service.dev import Stack, free_port, start_api, start_redis, start_worker, wait_until

ROUTES = ("submit", "poll", "sse", "image")
TERMINAL = {"succeeded", "failed", "canceled"}
PROMPT = "a small red circle in the center on a white background"
# Polls and streams pick among the most recent jobs, as clients follow what they just sent.
RECENT = 50
START_TIMEOUT_S = 300
# Under uvicorn's 5 s keep-alive: a connection the server is closing is never reused, which
# would fail a request with a ReadError that says nothing of the API.
KEEPALIVE_S = 2.0
# The last line of a traceback in the log: `package.module.SomeError: message`.
LOGGED_ERROR = re.compile(r"^[\s|]*((?:\w+\.)*\w+(?:Error|Exception)): ", re.MULTILINE)


@dataclass
class Sample:
    route: str
    latency_s: float | None
    status: int | None = None
    error: str | None = None
    retry_after: str | None = None


@dataclass
class Load:
    client: httpx.AsyncClient
    body: dict[str, object]
    rng: random.Random
    samples: list[Sample] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    succeeded: list[str] = field(default_factory=list)
    sse_done_s: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    scheduled: int = 0
    lag_s: float = 0.0

    def recent_job(self) -> str:
        return self.rng.choice(self.jobs[-RECENT:])

    def pick(self, route: str) -> str:
        """The route itself, or, while it has nothing to work on yet, one that makes that."""
        if route == "image" and not self.succeeded:
            route = "poll"
        if route in ("poll", "sse") and not self.jobs:
            route = "submit"
        return route

    async def run(self, route: str, at: float) -> None:
        loop = asyncio.get_running_loop()
        sample = Sample(route, None)
        try:
            if route == "submit":
                await self.submit(sample)
            elif route == "poll":
                await self.poll(sample)
            elif route == "sse":
                await self.sse(sample, at)
            else:
                await self.image(sample)
            if sample.latency_s is None:
                sample.latency_s = loop.time() - at
        except httpx.HTTPError as exc:
            sample.error = type(exc).__name__
        except asyncio.CancelledError:
            sample.error = "unfinished"
            self.samples.append(sample)
            raise
        self.samples.append(sample)

    async def submit(self, sample: Sample) -> None:
        reply = await self.client.post("/v1/generate", json=self.body)
        self.record(sample, reply)
        if reply.status_code == 202:
            self.jobs.append(reply.json()["id"])

    async def poll(self, sample: Sample) -> None:
        reply = await self.client.get(f"/v1/jobs/{self.recent_job()}")
        self.record(sample, reply)
        if reply.status_code == 200 and reply.json()["status"] == "succeeded":
            self.succeeded.append(reply.json()["id"])

    async def sse(self, sample: Sample, at: float) -> None:
        loop = asyncio.get_running_loop()
        job_id = self.recent_job()
        url = f"/v1/jobs/{job_id}/events"
        async with aconnect_sse(self.client, "GET", url) as source:
            self.record(sample, source.response)
            if source.response.status_code != 200:
                await source.response.aread()
                return
            async for event in source.aiter_sse():
                if sample.latency_s is None:
                    sample.latency_s = loop.time() - at
                if event.event == "status" and (status := event.json()["status"]) in TERMINAL:
                    self.sse_done_s.append(loop.time() - at)
                    self.outcomes[status] += 1
                    if status == "succeeded":
                        self.succeeded.append(job_id)
                    return
        sample.error = "stream ended before the job did"

    async def image(self, sample: Sample) -> None:
        reply = await self.client.get(f"/v1/jobs/{self.rng.choice(self.succeeded)}/images/0")
        self.record(sample, reply)

    @staticmethod
    def record(sample: Sample, reply: httpx.Response) -> None:
        sample.status = reply.status_code
        sample.retry_after = reply.headers.get("retry-after")


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in ROUTES:
            raise SystemExit(f"--mix: unknown route {name!r}; routes: {', '.join(ROUTES)}")
        mix[name.strip()] = float(weight)
    return mix


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def milliseconds(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:8.1f}" if values else f"{'-':>8}"


async def drive(args: argparse.Namespace, url: str) -> Load:
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    limits = httpx.Limits(
        max_connections=args.connections,
        max_keepalive_connections=200,
        keepalive_expiry=KEEPALIVE_S,
    )
    timeout = httpx.Timeout(args.timeout, connect=args.timeout, pool=args.timeout)
    body: dict[str, object] = {"prompt": PROMPT, "steps": args.steps}
    mix = parse_mix(args.mix)
    rng = random.Random(args.seed)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=timeout
    ) as client:
        load = Load(client, body, rng)
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        total = round(args.seconds * args.rate)
        start = loop.time() + 0.2
        lag = 0.0
        for i in range(total):
            at = start + i / args.rate
            await asyncio.sleep(max(0.0, at - loop.time()))
            lag = max(lag, loop.time() - at)
            route = load.pick(rng.choices(list(mix), weights=list(mix.values()))[0])
            task = asyncio.create_task(load.run(route, at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        # In-flight requests (streams of queued jobs, mostly) get a while to end.
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=args.drain)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        load.scheduled, load.lag_s = total, lag
        return load


def report(load: Load) -> int:
    """Print the table and the checks; the exit status: 1 if any error but 429 + Retry-After."""
    print(f"{load.scheduled} requests, started at most {load.lag_s * 1000:.0f} ms after their time")
    print(f"\n{'route':8} {'sent':>6} {'2xx':>6} {'p50 ms':>8} {'p99 ms':>8}  answers")
    for route in ROUTES:
        samples = [s for s in load.samples if s.route == route]
        ok = [s for s in samples if s.status is not None and s.status < 400 and not s.error]
        latencies = [s.latency_s for s in ok if s.latency_s is not None]
        answers = Counter(str(s.status) if s.error is None else s.error for s in samples)
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))
        print(
            f"{route:8} {len(samples):6d} {len(ok):6d} {milliseconds(latencies, 0.5)} "
            f"{milliseconds(latencies, 0.99)}  {shown}"
        )
    done = load.sse_done_s
    print(
        f"{'sse end':8} {len(done):6d} {'':6} {milliseconds(done, 0.5)} {milliseconds(done, 0.99)}"
        "  (to the final event)"
    )
    print(f"jobs seen to their end on streams: {dict(load.outcomes) or 'none'}")

    statuses = Counter(s.status for s in load.samples if s.status is not None)
    print("answers by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
    refused = [s for s in load.samples if s.status == 429]
    bad_retry = [s for s in refused if not (s.retry_after or "").isdigit()]
    other = [s for s in load.samples if s.error or ((s.status or 0) >= 400 and s.status != 429)]
    failed_jobs = load.outcomes["failed"]
    errors = Counter(
        f"{s.route} {s.error or s.status}" for s in other + bad_retry if s.error != "unfinished"
    )
    unfinished = sum(1 for s in load.samples if s.error == "unfinished")
    print(
        f"errors: {len(refused)} x 429 ({len(refused) - len(bad_retry)} with Retry-After), "
        f"other: {dict(errors) or 'none'}, unfinished at the end: {unfinished}, "
        f"failed jobs: {failed_jobs}"
    )
    if errors or bad_retry or failed_jobs:
        print("FAIL: errors other than 429 with Retry-After")
        return 1
    print("OK: the only errors are 429s with Retry-After")
    return 0


def logged_errors(log: Path) -> dict[str, int]:
    """The exceptions the stack's log ends tracebacks with, and how often."""
    found = Counter(m[1] for m in LOGGED_ERROR.finditer(log.read_text(errors="replace")))
    return dict(found.most_common())


@contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr, and so its children's, to `path` meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def start_stack(args: argparse.Namespace, stack: Stack, work: Path) -> str:
    from worker.tiny_model import build  # torch and diffusers: only for a stack of our own

    model = build(work / "tiny-sd3")
    env = dict(os.environ) | {
        env_var("model"): str(model),
        env_var("result_store"): f"file://{work / 'results'}",
        env_var("max_queued_jobs"): str(args.max_queued_jobs),
        "PYTHONUNBUFFERED": "1",
    }
    env[env_var("redis_url")] = start_redis(stack, work, env)
    for i in range(args.workers):
        start_worker(stack, env, f"bench-worker-{i}")
    url = start_api(stack, env, "127.0.0.1", free_port())

    def warm() -> bool:
        return bool(httpx.get(f"{url}/readyz").json()["workers"] >= args.workers)

    wait_until(warm, stack, "warm workers", START_TIMEOUT_S)
    return url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long requests start")
    parser.add_argument("--rate", type=float, default=20.0, help="requests started a second")
    parser.add_argument("--mix", default="submit=4,poll=3,sse=2,image=1", help="route weights")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps of each job")
    parser.add_argument("--workers", type=int, default=1, help="workers of our own stack")
    parser.add_argument(
        "--max-queued-jobs", type=int, default=20, help="SD3SERVE_MAX_QUEUED_JOBS of our stack"
    )
    parser.add_argument("--url", help="an API already running, instead of a stack of our own")
    parser.add_argument("--key", help="API key for --url (Authorization: Bearer)")
    parser.add_argument("--connections", type=int, default=2000, help="client connection limit")
    parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    parser.add_argument("--drain", type=float, default=60.0, help="wait for in-flight requests")
    parser.add_argument("--seed", type=int, default=1, help="of the route choices")
    args = parser.parse_args()

    stack = Stack()
    work = Path(tempfile.mkdtemp(prefix="sd3serve-load-"))
    # Outside `work`, which goes at the end: the stack's output, kept for a look afterwards.
    log = work.with_suffix(".log")
    try:
        if args.url:
            url = args.url
            where = url
        else:
            with output_to(log):
                url = start_stack(args, stack, work)
            where = (
                f"{url} (own stack: {args.workers} worker(s) on the tiny model, "
                f"max {args.max_queued_jobs} queued jobs; its output in {log})"
            )
        print(
            f"load: {args.seconds:g} s at {args.rate:g} requests/s, open loop, "
            f"mix {args.mix}, jobs of {args.steps} steps, against {where}",
            flush=True,
        )
        started = time.monotonic()
        load = asyncio.run(drive(args, url))
        print(f"ran {time.monotonic() - started:.1f} s, in-flight requests drained")
        status = report(load)
        if not args.url:
            print(f"API and worker errors logged: {logged_errors(log) or 'none'}")
        return status
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
