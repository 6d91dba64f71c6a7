"""Instructions per POST /v1/generate, the API's and the floor's, counted under callgrind.

On a shared machine whose speed drifts by a factor of two within minutes, a timing resolves a
difference of a few per cent only over many interleaved runs. The number of instructions a
process executes for a request does not drift: two counts of the same code agree within about
1 %. So this is the bench to compare two versions of the POST by, and bench/enqueue.py the one
that says what rate they reach.

For the API (`service.app.create_app`, the default settings, no keys) and for the floor
(bench/floor_app.py), each on a private redis-server with the model published as a pool
scaled to zero publishes it (jobs stay queued):

- **app**: a process under callgrind builds the app and calls it directly through ASGI,
  without a server: the app's own instructions per POST.
- **server** (with `--server`): the app under uvicorn as `sd3-serve api` runs it, under
  callgrind, answering POSTs sent one after another on one kept-alive connection from this
  process: all of the server process's instructions per POST, uvicorn's included.

Only the timed requests are counted (callgrind_control turns counting on after a warm-up and
off after them), and only user-space instructions: not the kernel's work for the sockets, nor
Redis's. It needs valgrind (Debian: `apt-get install valgrind`); it takes a minute or two.

    .venv/bin/python bench/instructions.py [--requests 300] [--server]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common.settings import env_var
from service.dev import Stack, free_port, publish_idle_model, start_redis, wait_until

ROOT = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
BODY = json.dumps({"prompt": "a small red circle in the center on a white background"}).encode()
WARM_REQUESTS = 100
TARGETS = ("api", "floor")
# What valgrind prints on exit: the instructions counted while counting was on.
COLLECTED = re.compile(r"Collected : (\d+)")


def counting(on: bool) -> None:
    """Turn callgrind's counting on or off in this process (run under callgrind)."""
    argv = ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())]
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)


async def post(app: Any) -> int:
    """One POST /v1/generate through the app's ASGI interface; its status."""
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/generate",
        "raw_path": b"/v1/generate",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the request is served
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def in_app(target: str, requests: int) -> None:
    """The child under callgrind: build the app, warm it, count `requests` POSTs."""
    if target == "floor":
        sys.path.insert(0, str(ROOT / "bench"))
        from floor_app import app
    else:
        from service.app import create_app

        app = create_app()
    async with app.router.lifespan_context(app):
        for _ in range(WARM_REQUESTS):
            if (status := await post(app)) != 202:
                raise SystemExit(f"{target} answered {status} to the warm-up POST")
        counting(True)
        for _ in range(requests):
            await post(app)
        counting(False)


def env_for(redis_url: str, work: Path) -> dict[str, str]:
    return dict(os.environ) | {
        env_var("redis_url"): redis_url,
        env_var("result_store"): f"file://{work / 'results'}",
        env_var("max_queued_jobs"): str(10**9),
        env_var("access_log"): "false",
        "FLOOR_REDIS_URL": redis_url,
        "PYTHONPATH": str(ROOT),
    }


def callgrind(work: Path, name: str, argv: list[str]) -> list[str]:
    """`argv` under callgrind, counting off until callgrind_control turns it on; valgrind's
    own messages (the count among them) go to `work`/`name`.log."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={work / name}.out",
        f"--log-file={work / name}.log",
        *argv,
    ]


def collected(work: Path, name: str) -> int:
    log = (work / f"{name}.log").read_text()
    found = COLLECTED.findall(log)
    if not found:
        raise SystemExit(f"valgrind printed no count:\n{log[-2000:]}")
    return int(found[-1])


def count_app(target: str, requests: int, env: dict[str, str], work: Path) -> int:
    name = f"app-{target}"
    argv = [sys.executable, __file__, "--child", target, "--requests", str(requests)]
    run = subprocess.run(callgrind(work, name, argv), env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"{target} under callgrind failed:\n{run.stderr[-2000:]}")
    return collected(work, name) // requests


def count_server(target: str, requests: int, env: dict[str, str], work: Path) -> int:
    name, port = f"server-{target}", free_port()
    if target == "floor":
        argv = [sys.executable, "-m", "uvicorn", "bench.floor_app:app", "--port", str(port)]
        argv += ["--no-access-log", "--log-level", "warning"]
    else:
        argv = [sys.executable, "-m", "service", "api", "--host", "127.0.0.1", "--port", str(port)]
    stack = Stack()  # its own: the server exiting at the end is no failure of the other's
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def send() -> int:
        connection.request("POST", "/v1/generate", BODY, {"content-type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status

    def up() -> bool:
        try:
            return send() == 202
        except OSError:
            connection.close()
            return False

    try:
        server = stack.start(name, callgrind(work, name, argv), env)
        wait_until(up, stack, f"the {target} under callgrind", 600)
        for _ in range(WARM_REQUESTS):
            send()
        control = ["callgrind_control", "-i", "on", str(server.pid)]
        subprocess.run(control, check=True, capture_output=True)
        for _ in range(requests):
            if (status := send()) != 202:
                raise SystemExit(f"{target} answered {status}")
        control[2] = "off"
        subprocess.run(control, check=True, capture_output=True)
    finally:
        connection.close()
        stack.stop()  # valgrind writes the count as the server exits
    return collected(work, name) // requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="POSTs counted per target")
    parser.add_argument("--server", action="store_true", help="also count whole server processes")
    parser.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import uvloop

        uvloop.run(in_app(args.child, args.requests))
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("needs valgrind (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    stack = Stack()
    work = Path(tempfile.mkdtemp(prefix="sd3serve-instructions-"))
    try:
        redis_url = start_redis(stack, work, dict(os.environ))
        publish_idle_model(redis_url, MODEL)
        env = env_for(redis_url, work)
        modes = [("app", count_app)] + ([("server", count_server)] if args.server else [])
        print(f"instructions per POST /v1/generate, {args.requests} counted after a warm-up")
        for mode, count in modes:
            api, floor = (count(target, args.requests, env, work) for target in TARGETS)
            print(f"  {mode:6s}  API {api:>10,}  floor {floor:>10,}  API/floor {api / floor:.2f}")
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
