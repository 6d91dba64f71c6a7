"""The enqueue path: Redis commands per request, POST /v1/generate throughput and latency, and
the cost of reading a queued job against a finished one, side by side in one run.

For each `--api-workers` value it starts its own stack on loopback: redis-server, and the API
with SD3SERVE_API_WORKERS at that value and a queue bound no run reaches. No worker runs: the
model is published as a pool scaled to zero publishes it, so every accepted job stays queued
and the API alone is measured. Then, for that stack:

1. Redis commands per request, counted with MONITOR (commands a script runs are not counted:
   a script is one command, one round trip): POST /v1/generate, GET of a queued job, GET of a
   finished (canceled) one.
2. GET /v1/jobs/{id} of a queued job and of a finished one, closed loop with `--connections`
   clients for half of `--seconds` each: requests per second of each and their ratio (before
   the POST loads, with the warm-up's jobs queued).
3. POST /v1/generate open loop at each `--rates` value for `--seconds`: requests start at fixed
   times whether or not earlier ones were answered, and each latency counts from its scheduled
   time, so a server (or a client) that falls behind shows it. It prints the rate answered,
   p50 and p99, and every answer other than 202.
4. With `--floor`, at each rate right after the API: the same load on bench/floor_app.py, the
   least an enqueue does on this stack (FastAPI under the same uvicorn, with as many processes,
   validating the same body and making one script call). Each load also prints the server's
   CPU time per request answered, read from /proc, and with the floor the ratio of the two:
   on a shared machine whose speed drifts, CPU per request says more than a rate, and the
   ratio, measured side by side, says what part of the cost is the service's own. Beside it,
   Redis's CPU and this client's per request: on a small machine the three share the cores.

The client is a minimal HTTP/1.1 one on asyncio protocols over uvloop (keep-alive
connections, no parsing beyond the status line and Content-Length, callbacks rather than a task
per request), so that on a small machine the client's own cost takes as little as possible from
the server it shares the CPUs with. Before each load it opens all its connections, then sends
each request on the one idle longest: requests go round all of them, and so round the server's
processes, as many clients' would; each load prints each process's share of the server's CPU.

    .venv/bin/python bench/enqueue.py [--seconds 10] [--rates 500,1000,1500]
        [--api-workers 1,2] [--connections 64] [--floor]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import floor_app  # beside this file: run as a script, bench/ is on the path
import httpx
import uvloop
from redis import Redis

from common import keys
from common.settings import env_var
from service.dev import (
    Stack,
    free_port,
    publish_idle_model,
    start_api,
    start_redis,
    wait_until,
)
from service.redis_monitor import commands_sent

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
JSON = {"content-type": "application/json"}
BODY = json.dumps({"prompt": "a small red circle in the center on a white background"}).encode()
SAMPLES = 200  # requests of each kind whose commands are counted
# Under uvicorn's 5 s keep-alive: a connection idle longer is closed rather than reused, lest
# the server close it under a request.
KEEPALIVE_S = 2.0
# uvloop's clock moves in whole milliseconds, and it runs a timer less than half a millisecond
# ahead at once. A request due a hair past the clock's reading (the float error in
# start + n / rate is enough) had the load's timer fire, find nothing due and set itself again,
# spinning until the clock ticked: 95 to 184 wakes per request at 1000/s, 0.4 to 0.8 ms of this
# client's CPU per request, taken from the two cores the server shares. So a request due
# within half a millisecond is sent now.
CLOCK_SLACK_S = 0.0005


Answer = tuple[int, bytes] | BaseException
"""A request's status and body, or why it got none."""


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, a request at a time: it reads no more of an answer
    than its status line and Content-Length, and calls back once the body is in."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.done: Callable[[Answer], None] | None = None
        self.idle_since = 0.0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, raw: bytes, done: Callable[[Answer], None]) -> None:
        assert self.transport is not None
        self.done = done
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        done, self.done = self.done, None
        if done is not None:
            done((int(head[9:12]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        done, self.done = self.done, None
        if done is not None:
            done(exc or ConnectionResetError("the server closed the connection"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Client:
    """HTTP/1.1 over at most `limit` keep-alive connections, callback-driven so that a request
    costs this process no task of its own: a request finding every connection busy waits its
    turn, first come first served.

    Requests go round the idle connections, the longest idle first. Each connection belongs to
    the one server process that accepted it; reusing the latest one instead sent most requests
    down a few connections, and in one measured run 72 % of them to one of two API processes
    (4.5 s of CPU in a 5 s load, the other 1.7 s), which then fell behind alone.
    """

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self.limit = limit
        self.idle: deque[_Connection] = deque()
        self.dialled = 0  # connections open or opening
        self.waiting: deque[tuple[bytes, Callable[[Answer], None]]] = deque()
        self.dials: set[asyncio.Task[None]] = set()

    def request_bytes(self, method: str, path: str, body: bytes = b"") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
        if body:
            head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + body

    def request(self, raw: bytes, done: Callable[[Answer], None]) -> None:
        """Send `raw` on a free connection, or once one is free; `done` gets the answer."""
        loop = asyncio.get_running_loop()
        while self.idle:
            conn = self.idle.popleft()
            if loop.time() - conn.idle_since < KEEPALIVE_S and not conn.lost:
                conn.send(raw, self._then(conn, done))
                return
            self._drop(conn)
        if self.dialled < self.limit:
            self._start_dial(raw, done)
        else:
            self.waiting.append((raw, done))

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()

        def settle(result: Answer) -> None:
            if not answer.done():  # its awaiter may have been canceled meanwhile
                answer.set_result(result)

        self.request(raw, settle)
        result = await answer
        if isinstance(result, BaseException):
            raise result
        return result

    async def fill(self) -> None:
        """Every connection open, and none stale, before a load: no request of it then waits
        for a dial, and the connections' share of each server process is settled."""
        loop = asyncio.get_running_loop()
        for conn in list(self.idle):
            if conn.lost or loop.time() - conn.idle_since >= KEEPALIVE_S:
                self.idle.remove(conn)
                self._drop(conn)
        while self.dialled < self.limit:
            self.dialled += 1
            conn = await self._connect()
            conn.idle_since = loop.time()
            self.idle.append(conn)

    def _start_dial(self, raw: bytes, done: Callable[[Answer], None]) -> None:
        self.dialled += 1
        task = asyncio.get_running_loop().create_task(self._dial(raw, done))
        self.dials.add(task)
        task.add_done_callback(self.dials.discard)

    async def _dial(self, raw: bytes, done: Callable[[Answer], None]) -> None:
        try:
            conn = await self._connect()
        except OSError as exc:
            done(exc)
            return
        conn.send(raw, self._then(conn, done))

    async def _connect(self) -> _Connection:
        """A new connection, already counted in `dialled`; a failed one frees its turn."""
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                _Connection, self.host, self.port
            )
        except OSError:
            self._freed()
            raise
        return conn

    def _then(self, conn: _Connection, done: Callable[[Answer], None]) -> Callable[[Answer], None]:
        def finished(answer: Answer) -> None:
            if isinstance(answer, BaseException):
                self._drop(conn)
            elif self.waiting:
                conn.send(*self._next(conn))
            else:
                conn.idle_since = asyncio.get_running_loop().time()
                self.idle.append(conn)
            done(answer)

        return finished

    def _next(self, conn: _Connection) -> tuple[bytes, Callable[[Answer], None]]:
        raw, done = self.waiting.popleft()
        return raw, self._then(conn, done)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._freed()

    def _freed(self) -> None:
        """A connection closed, or never opened: a request waiting for one gets its turn."""
        self.dialled -= 1
        if self.waiting and self.dialled < self.limit:
            self._start_dial(*self.waiting.popleft())

    async def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class OpenLoop:
    rate: float
    seconds: float
    latencies: list[float] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    lag_s: float = 0.0
    wall_s: float = 0.0


async def open_loop(client: Client, raw: bytes, rate: float, seconds: float) -> OpenLoop:
    result = OpenLoop(rate, seconds)
    loop = asyncio.get_running_loop()
    total = round(rate * seconds)
    all_done: asyncio.Future[None] = loop.create_future()
    pending = total

    def fire(at: float) -> None:
        now = loop.time()
        result.lag_s = max(result.lag_s, now - at)
        # From when it was due, or, sent up to CLOCK_SLACK_S early, from when it was sent.
        since = min(at, now)

        def done(answer: Answer) -> None:
            nonlocal pending
            if isinstance(answer, BaseException):
                result.answers[type(answer).__name__] += 1
            else:
                result.answers[str(answer[0])] += 1
                if answer[0] == 202:
                    result.latencies.append(loop.time() - since)
            pending -= 1
            if pending == 0 and not all_done.done():
                all_done.set_result(None)

        client.request(raw, done)

    # Each request at its own time, whether or not earlier ones were answered, from one timer
    # that sends what is due and sets itself for the next: not a task per request, so that the
    # client costs the machine little, and not thousands of timers set at once, which uvloop
    # measures from a clock it does not advance meanwhile (some then fired 80 ms late).
    start = loop.time() + 0.1
    sent = 0

    def due() -> None:
        nonlocal sent
        now = loop.time()
        while sent < total and start + sent / rate <= now + CLOCK_SLACK_S:
            fire(start + sent / rate)
            sent += 1
        if sent < total:
            loop.call_at(start + sent / rate, due)

    if total:
        loop.call_at(start, due)
    # Full collections in this process took 50 to 100 ms on the loaded machine (seen between
    # loads): one during a load would send every request due meanwhile late, counted against
    # the server.
    gc.disable()
    try:
        if total:
            with suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(all_done), seconds + 60)
    finally:
        gc.enable()
    result.wall_s = loop.time() - start
    return result


async def closed_loop(client: Client, raw: bytes, connections: int, seconds: float) -> float:
    """Requests per second that `connections` clients, each sending one after another, get."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    done = 0

    async def one_client() -> None:
        nonlocal done
        while loop.time() < deadline:
            status, _ = await client.send(raw)
            if status != 200:
                raise RuntimeError(f"GET answered {status}")
            done += 1

    started = loop.time()
    await asyncio.gather(*(one_client() for _ in range(connections)))
    return done / (loop.time() - started)


def start_stack(stack: Stack, work: Path, api_workers: int) -> tuple[str, str]:
    env = dict(os.environ) | {
        env_var("result_store"): f"file://{work / 'results'}",
        env_var("max_queued_jobs"): str(10**8),
        env_var("api_workers"): str(api_workers),
        "PYTHONUNBUFFERED": "1",
    }
    redis_url = start_redis(stack, work, env)
    env[env_var("redis_url")] = redis_url
    publish_idle_model(redis_url, MODEL)
    url = start_api(stack, env, "127.0.0.1", free_port())
    if api_workers > 1:
        # uvicorn answers /healthz from the first process up; the warm-up requests that follow
        # reach the others once they are there.
        wait_until(lambda: len(_workers(stack, "api")) >= api_workers, stack, "the API", 120)
    return redis_url, url


def _workers(stack: Stack, name: str) -> list[int]:
    """The processes of the uvicorn started as `name` that run its app: those its supervisor
    started, or with one worker, the process itself."""
    _, parent = next(child for child in stack.children if child[0] == name)
    found: list[int] = []
    for task in Path(f"/proc/{parent.pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found.extend(int(pid) for pid in children)
    # Beside them, maybe, multiprocessing's resource tracker.
    return [pid for pid in found if "resource_tracker" not in _cmdline(pid)] or [parent.pid]


def _cpu_s(pids: list[int]) -> float:
    """The CPU time, user and system, the processes have used so far."""
    total = 0
    for pid in pids:
        # The fields after the command's closing parenthesis: utime and stime are 12th and 13th.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class Cpu:
    """CPU time per request answered, in seconds: the server's, Redis's and this client's,
    who share the machine's cores; and each server process's share of the server's."""

    server: float
    redis: float
    client: float
    shares: tuple[float, ...]


@dataclass
class Server:
    """An HTTP server under load: its client, the processes whose CPU it is charged, and the
    Redis it uses."""

    client: Client
    pids: list[int]
    redis_pid: int

    async def open_loop(self, raw: bytes, rate: float, seconds: float) -> tuple[OpenLoop, Cpu]:
        """The run, and the CPU time it took per request answered."""
        await self.client.fill()
        pids = [*self.pids, self.redis_pid]
        before = [_cpu_s([pid]) for pid in pids], time.process_time()
        run = await open_loop(self.client, raw, rate, seconds)
        after = [_cpu_s([pid]) for pid in pids], time.process_time()
        used = [b - a for a, b in zip(before[0], after[0], strict=True)]
        answered = max(1, sum(run.answers.values()))
        server = sum(used[:-1])
        return run, Cpu(
            server / answered,
            used[-1] / answered,
            (after[1] - before[1]) / answered,
            tuple(u / server if server else 0.0 for u in used[:-1]),
        )


def start_floor(stack: Stack, redis_url: str, api_workers: int) -> str:
    """bench/floor_app.py under uvicorn with the API's options, on the stack's Redis."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "bench.floor_app:app", "--port", str(port)]
    argv += ["--workers", str(api_workers), "--no-access-log", "--log-level", "warning"]
    env = dict(os.environ) | {floor_app.REDIS_URL_ENV: redis_url, "PYTHONPATH": str(ROOT)}
    stack.start("floor", argv, env)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.post(f"{url}/v1/generate", content=BODY, headers=JSON).status_code == 202
        except httpx.HTTPError:
            return False

    wait_until(up, stack, "the floor app", 60)
    wait_until(lambda: len(_workers(stack, "floor")) >= api_workers, stack, "the floor app", 60)
    return url


def _client(url: str, connections: int) -> Client:
    host, port = url.removeprefix("http://").split(":")
    return Client(host, int(port), connections)


def open_loop_line(name: str, run: OpenLoop, cpu: Cpu) -> str:
    answered = sum(run.answers.values()) / run.wall_s
    lat = run.latencies
    p50 = f"{percentile(lat, 0.5) * 1000:.1f}" if lat else "-"
    p99 = f"{percentile(lat, 0.99) * 1000:.1f}" if lat else "-"
    others = {k: v for k, v in run.answers.items() if k != "202"}
    line = (
        f"{name} open loop at {run.rate:g}/s for {run.seconds:g} s: {answered:.0f} "
        f"answered/s, p50 {p50} ms, p99 {p99} ms, client start lag max "
        f"{run.lag_s * 1000:.0f} ms, other answers: {others or 'none'}; "
        f"server CPU {cpu.server * 1000:.2f} ms per request (Redis {cpu.redis * 1000:.2f}, "
        f"this client {cpu.client * 1000:.2f})"
    )
    if len(cpu.shares) > 1:
        line += ", by process " + " / ".join(f"{share:.0%}" for share in cpu.shares)
    return line


async def measure(
    args: argparse.Namespace, stack: Stack, redis_url: str, url: str, floor_url: str | None
) -> list[str]:
    client = _client(url, args.connections)
    redis_pid = next(process.pid for name, process in stack.children if name == "redis")
    api = Server(client, _workers(stack, "api"), redis_pid)
    post = client.request_bytes("POST", "/v1/generate", BODY)
    floor = None
    if floor_url:
        floor = Server(_client(floor_url, args.connections), _workers(stack, "floor"), redis_pid)
    lines = []
    try:
        # Warm: every process has loaded its scripts and met the model once.
        # Concurrent, over many connections, so that every API process gets some.
        for status, body in await asyncio.gather(
            *(client.send(post) for _ in range(100 * args.api_workers_now))
        ):
            if status != 202:
                raise RuntimeError(f"POST answered {status}: {body[:300]!r}")
        queued = json.loads(body)["id"]
        status, body = await client.send(post)
        finished = json.loads(body)["id"]
        status, _ = await client.send(client.request_bytes("DELETE", f"/v1/jobs/{finished}"))
        assert status == 200, status
        get_queued = client.request_bytes("GET", f"/v1/jobs/{queued}")
        get_finished = client.request_bytes("GET", f"/v1/jobs/{finished}")
        for raw in (get_queued, get_finished):
            for _ in range(20):
                await client.send(raw)

        per: dict[str, float] = {}
        for name, raw in (("POST", post), ("GET queued", get_queued), ("GET done", get_finished)):
            # MONITOR's thread blocks; the requests run meanwhile on this loop.
            with commands_sent(redis_url) as sent:
                for _ in range(SAMPLES):
                    await client.send(raw)
            per[name] = len(sent()) / SAMPLES
        lines.append(
            "redis commands per request (MONITOR, script-internal ones left out): "
            + ", ".join(f"{name} {value:.2f}" for name, value in per.items())
        )

        rates = {}
        for name, raw in (("queued", get_queued), ("finished", get_finished)):
            rates[name] = await closed_loop(client, raw, args.connections, args.seconds / 2)
        with Redis.from_url(redis_url) as redis:
            depth = redis.llen(keys.rq_queue(MODEL))
        lines.append(
            f"GET /v1/jobs/{{id}} closed loop, {args.connections} clients, {depth} jobs queued: "
            "queued "
            f"{rates['queued']:.0f}/s, finished {rates['finished']:.0f}/s; a queued read costs "
            f"{rates['finished'] / rates['queued']:.2f}x a finished one"
        )
        if floor is not None:
            warm = (floor.client.send(post) for _ in range(100 * args.api_workers_now))
            await asyncio.gather(*warm)
        for rate in args.rates:
            run, ours = await api.open_loop(post, rate, args.seconds)
            lines.append(open_loop_line("POST", run, ours))
            if floor is not None:
                run, least = await floor.open_loop(post, rate, args.seconds)
                lines.append(open_loop_line("floor POST", run, least))
                ratio = ours.server / least.server
                lines.append(f"  the API's CPU per request: {ratio:.2f}x the floor's")

    finally:
        await client.close()
        if floor is not None:
            await floor.client.close()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="of each measured load")
    parser.add_argument(
        "--rates", default="500,1000,1500", help="POST open-loop rates, comma-separated"
    )
    parser.add_argument(
        "--api-workers", default="1,2", help="SD3SERVE_API_WORKERS values, comma-separated"
    )
    parser.add_argument("--connections", type=int, default=64, help="client connection limit")
    parser.add_argument(
        "--floor", action="store_true", help="also load bench/floor_app.py at each rate"
    )
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    print(
        f"enqueue bench: {os.cpu_count()} CPUs, {args.seconds:g} s per load, POST rates "
        f"{args.rates}, up to {args.connections} connections; no worker (jobs stay queued)",
        flush=True,
    )
    for api_workers in [int(n) for n in args.api_workers.split(",")]:
        args.api_workers_now = api_workers
        stack = Stack()
        work = Path(tempfile.mkdtemp(prefix="sd3serve-enqueue-"))
        try:
            redis_url, url = start_stack(stack, work, api_workers)
            floor_url = start_floor(stack, redis_url, api_workers) if args.floor else None
            print(f"\nSD3SERVE_API_WORKERS={api_workers}", flush=True)
            for line in uvloop.run(measure(args, stack, redis_url, url, floor_url)):
                print("  " + line, flush=True)
            # The metrics of every process, summed: the POSTs above, from any process.
            page = httpx.get(f"{url}/metrics").text
            posts = sum(
                float(line.split()[-1])
                for line in page.splitlines()
                if line.startswith('sd3serve_http_requests_total{route="/v1/generate"')
            )
            print(f"  /metrics counts {posts:.0f} POST /v1/generate in all", flush=True)
        finally:
            stack.stop()
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
