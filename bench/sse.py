"""Many event streams on one API process, and the other clients' requests meanwhile.

Queues `--streams` jobs for a model no worker serves (so that their streams stay open), opens
one SSE connection per job (GET /v1/jobs/{id}/events) and holds them all for `--hold` seconds.
Meanwhile other clients send `--rate` requests a second, open loop (at fixed times, latency
counted from each one's time): POST /v1/generate, GET /v1/jobs/{id} and GET /v1/models in
turn. During the hold it counts Redis's client connections (CLIENT LIST, less its own): with
the API's per-process event fan-out they stay a handful however many streams are open.

It prints how many streams opened and stayed open, how many other requests succeeded or
failed with their p50 and p99, and the Redis connections; it exits 1 if a stream failed or
another request did. Without `--url` it starts its own redis-server and ONE API process on
loopback (output in a log file), SD3SERVE_MAX_STREAMS raised to `--streams` when above its
default, and publishes the worker-less model itself; with `--url`, give `--redis-url` for the
model record and the connection count.

    .venv/bin/python bench/sse.py [--streams 1000] [--hold 20] [--rate 20]
        [--url URL --redis-url URL [--key KEY]]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from httpx_sse import aconnect_sse
from redis.asyncio import Redis as AsyncRedis

from common.settings import env_var
from service.dev import Stack, free_port, publish_idle_model, start_api, start_redis
from service.settings import ApiSettings

# A model that workers have published and left: its jobs queue, and their streams stay open.
IDLE_MODEL = "bench-idle"
PROMPT = "a small red circle in the center on a white background"
OTHER_ROUTES = ("generate", "get job", "models")
DEFAULT_MAX_STREAMS: int = ApiSettings.model_fields["max_streams"].default
# Jobs are queued and streams opened this many at a time: a burst, not a thousand SYNs at once.
SETUP_CONCURRENCY = 100
# The longest the streams may take to open, all together; any not open by then count as failed.
OPEN_TIMEOUT_S = 300
# A connection unused this long is counted as idle, a pooled one rather than one in use.
IDLE_S = 2
# Under uvicorn's 5 s keep-alive: a connection the server is closing is never reused, which
# would fail a request with a ReadError that says nothing of the API.
KEEPALIVE_S = 2.0
# The last line of a traceback in the log: `package.module.SomeError: message`.
LOGGED_ERROR = re.compile(r"^[\s|]*((?:\w+\.)*\w+(?:Error|Exception)): ", re.MULTILINE)


@dataclass
class Streams:
    opened: int = 0
    open_now: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def settle(self, total: int) -> None:
        """Note that every stream has either opened or failed, once it is so."""
        if self.opened + sum(self.errors.values()) >= total:
            self.settled.set()


@dataclass
class Sample:
    route: str
    latency_s: float
    status: int | None = None
    error: str | None = None


async def submit(client: httpx.AsyncClient, model: str) -> str:
    reply = await client.post("/v1/generate", json={"prompt": PROMPT, "model": model})
    reply.raise_for_status()
    job_id: str = reply.json()["id"]
    return job_id


async def queue_jobs(client: httpx.AsyncClient, model: str, count: int) -> list[str]:
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one() -> str:
        async with gate:
            return await submit(client, model)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def hold_stream(
    client: httpx.AsyncClient, job_id: str, streams: Streams, total: int, gate: asyncio.Semaphore
) -> None:
    """Open the job's stream, count it open at its first event, and read it until cancelled."""
    counted = False
    try:
        async with AsyncExitStack() as exits:
            async with gate:
                url = f"/v1/jobs/{job_id}/events"
                source = await exits.enter_async_context(aconnect_sse(client, "GET", url))
            if source.response.status_code != 200:
                streams.errors[f"status {source.response.status_code}"] += 1
                return
            async for _ in source.aiter_sse():
                if not counted:
                    counted = True
                    streams.opened += 1
                    streams.open_now += 1
                    streams.settle(total)
            streams.errors["stream ended while its job was queued"] += 1
    except httpx.HTTPError as exc:
        streams.errors[type(exc).__name__] += 1
    finally:
        if counted:
            streams.open_now -= 1
        streams.settle(total)


async def other_request(
    client: httpx.AsyncClient,
    route: str,
    model: str,
    jobs: list[str],
    at: float,
    samples: list[Sample],
) -> None:
    loop = asyncio.get_running_loop()
    try:
        if route == "generate":
            reply = await client.post("/v1/generate", json={"prompt": PROMPT, "model": model})
        elif route == "get job":
            reply = await client.get(f"/v1/jobs/{jobs[len(samples) % len(jobs)]}")
        else:
            reply = await client.get("/v1/models")
        samples.append(Sample(route, loop.time() - at, status=reply.status_code))
    except httpx.HTTPError as exc:
        samples.append(Sample(route, loop.time() - at, error=type(exc).__name__))


async def other_clients(
    client: httpx.AsyncClient, model: str, jobs: list[str], seconds: float, rate: float
) -> list[Sample]:
    loop = asyncio.get_running_loop()
    samples: list[Sample] = []
    tasks = []
    start = loop.time()
    for i in range(round(seconds * rate)):
        at = start + i / rate
        await asyncio.sleep(max(0.0, at - loop.time()))
        route = OTHER_ROUTES[i % len(OTHER_ROUTES)]
        request = other_request(client, route, model, jobs, at, samples)
        tasks.append(asyncio.create_task(request))
    await asyncio.gather(*tasks)
    return samples


@dataclass
class RedisClients:
    """Redis's client connections but the bench's own, from CLIENT LIST."""

    total: int
    blocked: int
    idle: int
    by_command: Counter[str]

    def __str__(self) -> str:
        commands = ", ".join(f"{k}: {v}" for k, v in self.by_command.most_common())
        return (
            f"{self.total}: {self.blocked} blocked (a blocking XREAD), {self.idle} idle for "
            f"{IDLE_S} s or more (pooled); by last command: {commands}"
        )


async def redis_clients(redis_url: str) -> RedisClients:
    async with AsyncRedis.from_url(redis_url, decode_responses=True) as redis:
        own = await redis.client_id()
        clients = [c for c in await redis.client_list() if int(c["id"]) != own]
    return RedisClients(
        total=len(clients),
        blocked=sum("b" in c["flags"] for c in clients),
        idle=sum(int(c["idle"]) >= IDLE_S for c in clients),
        by_command=Counter(str(c["cmd"]) for c in clients),
    )


def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def milliseconds(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:8.1f}" if values else f"{'-':>8}"


async def run(args: argparse.Namespace, url: str, redis_url: str | None) -> int:
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    # No read timeout: an idle stream only gets a keep-alive comment now and then.
    stream_timeout = httpx.Timeout(args.timeout, read=None)
    stream_limits = httpx.Limits(max_connections=args.streams + 100, max_keepalive_connections=0)
    other_limits = httpx.Limits(
        max_connections=500, max_keepalive_connections=100, keepalive_expiry=KEEPALIVE_S
    )
    async with (
        httpx.AsyncClient(
            base_url=url, headers=headers, timeout=stream_timeout, limits=stream_limits
        ) as streaming,
        httpx.AsyncClient(
            base_url=url, headers=headers, timeout=args.timeout, limits=other_limits
        ) as others,
    ):
        started = time.monotonic()
        jobs = await queue_jobs(others, args.model, args.streams)
        print(f"queued {len(jobs)} jobs for {args.model} in {time.monotonic() - started:.1f} s")

        streams = Streams()
        gate = asyncio.Semaphore(SETUP_CONCURRENCY)
        started = time.monotonic()
        holders = [
            asyncio.create_task(hold_stream(streaming, job, streams, len(jobs), gate))
            for job in jobs
        ]
        with suppress(TimeoutError):
            await asyncio.wait_for(streams.settled.wait(), OPEN_TIMEOUT_S)
        print(
            f"streams open: {streams.opened} of {len(jobs)} in {time.monotonic() - started:.1f} s;"
            f" errors: {dict(streams.errors) or 'none'}",
            flush=True,
        )
        baseline = await redis_clients(redis_url) if redis_url else None

        async def count_midway() -> RedisClients | None:
            await asyncio.sleep(args.hold / 2)
            return await redis_clients(redis_url) if redis_url else None

        midway = asyncio.create_task(count_midway())
        samples = await other_clients(others, args.model, jobs, args.hold, args.rate)
        during = await midway
        still_open = streams.open_now
        stream_errors = dict(streams.errors)
        for holder in holders:
            holder.cancel()
        await asyncio.gather(*holders, return_exceptions=True)

    print(
        f"\nheld {args.hold:g} s: streams still open at its end: {still_open} of {len(jobs)}; "
        f"stream errors in all: {stream_errors or 'none'}"
    )
    print(f"other clients, {args.rate:g} requests/s open loop during the hold:")
    print(f"  {'route':8} {'sent':>6} {'ok':>6} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8}  answers")
    for route in OTHER_ROUTES:
        mine = [s for s in samples if s.route == route]
        ok = [s.latency_s for s in mine if s.status is not None and s.status < 400]
        answers = Counter(str(s.status) if s.error is None else s.error for s in mine)
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(answers.items()))
        print(
            f"  {route:8} {len(mine):6d} {len(ok):6d} {len(mine) - len(ok):6d} "
            f"{milliseconds(ok, 0.5)} {milliseconds(ok, 0.99)}  {shown}"
        )
    ok_all = [s.latency_s for s in samples if s.status is not None and s.status < 400]
    failed = len(samples) - len(ok_all)
    print(
        f"  {'all':8} {len(samples):6d} {len(ok_all):6d} {failed:6d} "
        f"{milliseconds(ok_all, 0.5)} {milliseconds(ok_all, 0.99)}"
    )
    for when, counted in (("with the streams open", baseline), ("midway through the hold", during)):
        if counted is not None:
            print(f"redis client connections {when}: {counted}")
    if streams.errors or still_open < len(jobs) or failed:
        print("FAIL: a stream failed or closed early, or another request failed")
        return 1
    print(f"OK: {len(jobs)} streams held on one API process; every other request answered")
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


def start_stack(args: argparse.Namespace, stack: Stack, work: Path) -> tuple[str, str]:
    env = dict(os.environ) | {
        env_var("result_store"): f"file://{work / 'results'}",
        # Every job stays queued: room for all of them and the other clients' besides.
        env_var("max_queued_jobs"): str(args.streams + round(args.hold * args.rate) + 100),
        env_var("max_streams"): str(max(args.streams, DEFAULT_MAX_STREAMS)),
        env_var("api_workers"): "1",
        "PYTHONUNBUFFERED": "1",
    }
    redis_url = start_redis(stack, work, env)
    env[env_var("redis_url")] = redis_url
    publish_idle_model(redis_url, IDLE_MODEL)
    return start_api(stack, env, "127.0.0.1", free_port()), redis_url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000, help="SSE connections to hold")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds to hold them")
    parser.add_argument("--rate", type=float, default=20.0, help="other requests a second")
    parser.add_argument("--url", help="an API already running, instead of one of our own")
    parser.add_argument("--redis-url", help="its Redis (with --url): model record, CLIENT LIST")
    parser.add_argument("--key", help="API key for --url (Authorization: Bearer)")
    parser.add_argument("--model", default=IDLE_MODEL, help="a model no worker serves")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    args = parser.parse_args()

    stack = Stack()
    work = Path(tempfile.mkdtemp(prefix="sd3serve-sse-"))
    # Outside `work`, which goes at the end: the stack's output, kept for a look afterwards.
    log = work.with_suffix(".log")
    try:
        if args.url:
            url, redis_url = args.url, args.redis_url
            if redis_url and args.model == IDLE_MODEL:
                publish_idle_model(redis_url, IDLE_MODEL)
            where = url
        else:
            with output_to(log):
                url, redis_url = start_stack(args, stack, work)
            where = f"{url} (own redis-server and one API process; their output in {log})"
        print(
            f"sse: {args.streams} streams held {args.hold:g} s on one API process at {where}, "
            f"other clients at {args.rate:g} requests/s",
            flush=True,
        )
        status = asyncio.run(run(args, url, redis_url))
        if not args.url:
            print(f"API errors logged: {logged_errors(log) or 'none'}")
        return status
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
