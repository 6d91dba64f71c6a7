"""`sd3-serve dev`: the whole stack on one machine, started and stopped as one."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import httpx
from dotenv import dotenv_values
from redis import Redis
from redis.exceptions import RedisError

from common import workers
from common.contract import ModelInfo
from common.settings import ENV_FILE, env_var

READY_TIMEOUT_S = 600.0  # a real checkpoint can take minutes to load
# What a Redis holding jobs needs (README, "Production Redis"): every accepted job on disk
# within a second, and a full Redis refusing writes rather than evicting a job or a queue entry.
REDIS_DURABILITY = (
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
    "--maxmemory-policy",
    "noeviction",
)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: children get SIGTERM if this process dies, even by SIGKILL, so none is left behind.
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Stack:
    """Child processes started in order and stopped in reverse order."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent
        )
        self.children.append((name, proc))
        return proc

    def exited(self) -> str | None:
        for name, proc in self.children:
            if proc.poll() is not None:
                return f"{name} exited with code {proc.returncode}"
        return None

    def stop(self, grace_s: float = 20.0) -> None:
        for _, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_until(check: Callable[[], bool], stack: Stack | None, what: str, timeout_s: float) -> None:
    """Poll `check` until it holds; give up early should a child of `stack` (if any) exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if stack is not None and (problem := stack.exited()):
            raise RuntimeError(f"{problem} while waiting for {what}")
        try:
            if check():
                return
        except (httpx.HTTPError, OSError, RedisError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _redis_up(url: str) -> bool:
    with Redis.from_url(url, socket_timeout=1) as r:
        return bool(r.ping())


def start_redis(stack: Stack, workdir: Path, env: dict[str, str], port: int | None = None) -> str:
    """A private redis-server on a loopback port (a free one by default), configured as a
    production one should be (README, "Production Redis"), its data in `workdir`/redis;
    returns its URL."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError(
            "redis-server is not on PATH: install it (apt-get install redis-server) "
            f"or set {env_var('redis_url')}"
        )
    port = port or free_port()
    data = workdir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        server,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data),
        # The append-only file is the persistence; no RDB snapshots besides.
        "--save",
        "",
        *REDIS_DURABILITY,
    ]
    stack.start("redis", argv, env)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: _redis_up(url), stack, "redis-server", 30)
    return url


def start_worker(
    stack: Stack, env: dict[str, str], name: str, cwd: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A worker process with its metrics on a free loopback port; returns it and their base URL.
    `cwd`: the directory it starts in, whose packages it imports (another checkout's)."""
    metrics_port = free_port()
    worker_env = env | {
        env_var("metrics_host"): "127.0.0.1",
        env_var("metrics_port"): str(metrics_port),
        env_var("worker_name"): name,
    }
    process = stack.start(name, [sys.executable, "-m", "worker"], worker_env, cwd)
    return process, f"http://127.0.0.1:{metrics_port}"


def start_api(
    stack: Stack, env: dict[str, str], host: str, port: int, cwd: Path | None = None
) -> str:
    """The API under uvicorn; returns its URL once /healthz answers. `cwd` as for
    start_worker."""
    argv = [sys.executable, "-m", "service", "api", "--host", host, "--port", str(port)]
    stack.start("api", argv, env, cwd)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, stack, "the API", 120)
    return url


def run_dev(host: str, port: int, workers: int) -> int:
    env = dict(os.environ)
    stack = Stack()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    # Explicitly, not Python's default: a shell that starts us in the background (`cmd &` in
    # a script) hands SIGINT down ignored, and Python keeps it so; Ctrl-C must still stop us.
    signal.signal(signal.SIGINT, on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="sd3serve-dev-"))
    try:
        redis_url = env_var("redis_url")
        # A Redis named in the environment or in .env is used; otherwise a private one.
        if redis_url not in env and redis_url not in dotenv_values(ENV_FILE):
            env[redis_url] = start_redis(stack, tmp, env)

        metrics_urls = [
            start_worker(stack, env, f"dev-worker-{i}")[1] + "/metrics" for i in range(workers)
        ]
        api = start_api(stack, env, host, port)

        def ready() -> bool:
            reply = httpx.get(f"{api}/readyz", timeout=2).json()
            return bool(reply.get("workers", 0) >= workers)

        wait_until(ready, stack, "the API and warm workers", READY_TIMEOUT_S)
        print(f"\nsd3-serve is ready\n  API:     {api}  (docs at {api}/docs)")
        for i, url in enumerate(metrics_urls):
            print(f"  worker {i} metrics: {url}")
        print("Press Ctrl-C to stop.\n", flush=True)
        while not (problem := stack.exited()):
            time.sleep(0.5)
        print(f"stopping: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping sd3-serve ...", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"sd3-serve dev: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the orderly shutdown short and orphan a child.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def model_record(name: str) -> ModelInfo:
    """The record a worker of the tiny model would publish as `name`: for tests and benchmarks
    that stand in for a worker."""
    return ModelInfo(
        id=name,
        source="a worker that has scaled to zero",
        pipeline="StableDiffusion3Pipeline",
        device="cpu",
        dtype="float32",
        size_multiple=8,
        min_size=64,
        max_size=512,
        default_width=64,
        default_height=64,
        default_steps=8,
        default_guidance_scale=4.5,
        scheduler="FlowMatchEulerDiscreteScheduler",
        scheduler_shift=3.0,
        text_encoders=["CLIPTextModelWithProjection"] * 2,
    )


def publish_idle_model(redis_url: str, name: str) -> str:
    """Write the model record `name` as a worker's heartbeat does, for a worker gone at once:
    the state a pool scaled to zero leaves (the model known, no worker warm), for tests and
    benchmarks that measure the API with no worker. Returns `name`."""
    with Redis.from_url(redis_url) as redis:
        beat_keys, args = workers.beat_call(f"{name}-gone", 1, model_record(name))
        redis.register_script(workers.BEAT)(keys=beat_keys, args=args)
        redis.zrem(beat_keys[0], f"{name}-gone")
    return name
