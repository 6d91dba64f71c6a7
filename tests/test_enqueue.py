"""The enqueue path against a real redis-server and the real API over HTTP: one Redis round trip
per POST, the API's cache of model records and what invalidates it, queue positions without a
scan per read that stay right when jobs leave the middle of the queue or return to its front,
and several API processes.

No worker runs: models are published as a pool scaled to zero publishes them, so that every
accepted job stays queued where the test put it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest
from redis import Redis

from common import keys
from service import admission, queue, store
from service.dev import Stack, publish_idle_model
from service.redis_monitor import commands_sent, evalsha
from tests.harness import (
    Api,
    poll,
    settings_env,
    start_api,
    start_redis,
)
from tests.helpers import submit


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[tuple[Api, str]]:
    """Redis and the API, no worker: (the API, Redis' URL)."""
    with stack_of(tmp_path) as started:
        yield started


@contextmanager
def stack_of(tmp_path: Path, **settings: object) -> Iterator[tuple[Api, str]]:
    stack = Stack()
    try:
        redis_url = start_redis(stack, tmp_path)
        env = settings_env(
            redis_url=redis_url, result_store=f"file://{tmp_path / 'results'}", **settings
        )
        api = start_api(stack, env | {"PYTHONUNBUFFERED": "1"})
        with closing(api.client):
            yield api, redis_url
    finally:
        stack.stop()


def test_a_post_is_one_redis_round_trip(bare: tuple[Api, str]) -> None:
    api, redis_url = bare
    model = publish_idle_model(redis_url, "idle")
    # The first POST loads the script and reads the model records; later ones need neither.
    assert submit(api, prompt="warm", steps=1).status_code == 202
    posts = 20
    with commands_sent(redis_url) as sent:
        for i in range(posts):
            assert submit(api, prompt=f"job {i}", steps=1).status_code == 202
            assert submit(api, model=model, prompt=f"named {i}", steps=1).status_code == 202
            keyed = api.client.post(
                "/v1/generate",
                json={"prompt": f"idempotent {i}", "steps": 1},
                headers={"Idempotency-Key": f"key-{i}"},
            )
            assert keyed.status_code == 202
    # One command a POST: the admission script, which checks the model's record and the
    # queue's bound, records the job and enqueues it.
    assert sent() == [evalsha(admission.SUBMIT)] * (3 * posts)


def test_reading_a_queued_job_scans_no_queue(bare: tuple[Api, str]) -> None:
    api, redis_url = bare
    publish_idle_model(redis_url, "idle")
    jobs = [submit(api, prompt=f"job {i}", steps=1).json()["id"] for i in range(5)]
    # The first read loads the scripts.
    assert api.client.get(f"/v1/jobs/{jobs[0]}").json()["queue_position"] == 0
    reads = 100
    with commands_sent(redis_url) as sent:
        for i in range(reads):
            view = api.client.get(f"/v1/jobs/{jobs[i % len(jobs)]}").json()
            assert view["status"] == "queued"
    commands = sent()
    # Each read is one command, which reads the job's record and RQ's state of it; a look at
    # the queue (one command, that reads it whole) serves every read for a while.
    looks = commands.count(evalsha(queue.LOOK))
    assert commands.count(evalsha(store.READ)) == reads
    assert len(commands) == reads + looks
    assert looks < reads / 4


def record_of(redis: Redis, model: str) -> dict[str, object]:
    record: dict[str, object] = json.loads(redis.hget(keys.MODELS, model))  # type: ignore[arg-type]
    return record


def test_the_model_cache_sees_every_change(bare: tuple[Api, str]) -> None:
    api, redis_url = bare
    # None known yet: refused, and the refusal is not cached.
    assert submit(api, prompt="too soon", steps=1).status_code == 503
    first = publish_idle_model(redis_url, "first")
    assert submit(api, prompt="to the only model", steps=1).json()["model"] == first

    # A second model appears: a request naming none must now name one.
    second = publish_idle_model(redis_url, "second")
    unnamed = submit(api, prompt="which one?", steps=1)
    assert unnamed.status_code == 422, unnamed.text
    assert second in unnamed.json()["error"]["message"]
    assert submit(api, model=second, prompt="x", steps=1).json()["model"] == second

    # A model's record changes (its worker restarted with other limits): the job is checked
    # against the new one, though the old one allowed it.
    assert submit(api, model=first, prompt="x", width=256, height=64).status_code == 202
    with Redis.from_url(redis_url) as redis:
        record = record_of(redis, first) | {"max_size": 128}
        redis.hset(keys.MODELS, first, json.dumps(record))
    too_big = submit(api, model=first, prompt="x", width=256, height=64)
    assert too_big.status_code == 422 and too_big.json()["error"]["field"] == "width"
    assert "between 64 and 128" in too_big.json()["error"]["message"]
    listed = {m["id"]: m for m in api.client.get("/v1/models").json()["data"]}
    assert listed[first]["max_size"] == 128
    # Raised again (a redeploy with larger limits): the cached record refuses nothing the
    # record Redis holds now allows.
    with Redis.from_url(redis_url) as redis:
        redis.hset(keys.MODELS, first, json.dumps(record | {"max_size": 512}))
    assert submit(api, model=first, prompt="x", width=256, height=64).status_code == 202

    # The records are lost (a Redis without persistence restarted): nothing is admitted on
    # what the API remembers.
    with Redis.from_url(redis_url) as redis:
        redis.delete(keys.MODELS)
    assert submit(api, model=first, prompt="x", steps=1).status_code == 422
    assert submit(api, prompt="x", steps=1).status_code == 503
    # ... until a heartbeat publishes the model again.
    publish_idle_model(redis_url, first)
    assert submit(api, prompt="back", steps=1).json()["model"] == first


def api_supervisor(api: Api) -> int:
    port = api.url.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        cmdline = proc / "cmdline"
        if proc.name.isdigit() and cmdline.exists():
            try:
                argv = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if b"api" in argv and port.encode() in argv:
                return int(proc.name)
    raise AssertionError("no API process")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def positions(api: Api, jobs: list[str]) -> list[int | None]:
    return [api.client.get(f"/v1/jobs/{job}").json()["queue_position"] for job in jobs]


def test_positions_follow_middle_removals_and_front_pushes(bare: tuple[Api, str]) -> None:
    api, redis_url = bare
    model = publish_idle_model(redis_url, "idle")
    jobs = [submit(api, prompt=f"job {i}", steps=1).json()["id"] for i in range(6)]
    poll(lambda: positions(api, jobs) == [0, 1, 2, 3, 4, 5], "positions in order of arrival")

    # A job canceled from the middle: those behind it move up.
    assert api.client.delete(f"/v1/jobs/{jobs[2]}").status_code == 200
    left = jobs[:2] + jobs[3:]
    poll(lambda: positions(api, left) == [0, 1, 2, 3, 4], "the cancel to show")

    with Redis.from_url(redis_url, decode_responses=True) as redis:
        queue = keys.rq_queue(model)
        # A worker takes a job from the middle (as cross-job batching does, LREM): still
        # recorded queued until it starts, it is next; the others close the gap.
        assert redis.lrem(queue, 1, left[3]) == 1
        poll(
            lambda: positions(api, left) == [0, 1, 2, 0, 3],
            "a job taken from the middle to show",
        )
        # A lost worker's job put back at the front (the reaper's LPUSH): all move back one.
        redis.lpush(queue, left[3])
        poll(
            lambda: positions(api, left) == [1, 2, 3, 0, 4],
            "a job pushed to the front to show",
        )
        assert redis.lrange(queue, 0, -1) == [left[3], left[0], left[1], left[2], left[4]]

    # A job queued after them all is behind them all.
    last = submit(api, prompt="last", steps=1).json()["id"]
    poll(lambda: positions(api, [last]) == [5], "a new job behind the others")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_several_api_processes_serve_and_count_as_one(tmp_path: Path) -> None:
    with stack_of(tmp_path, api_workers=2) as (api, redis_url):
        model = publish_idle_model(redis_url, "idle")
        # uvicorn's supervisor's children: the API processes (and maybe multiprocessing's
        # resource tracker); /healthz answered once the first was up.
        supervisor = api_supervisor(api)
        poll(lambda: len(children(supervisor)) >= 2, "two API processes")
        posts = 30
        jobs = []
        for i in range(posts):
            # A new connection each time, so that the kernel spreads them over the processes.
            reply = httpx.post(f"{api.url}/v1/generate", json={"prompt": f"{i}", "steps": 1})
            assert reply.status_code == 202, reply.text
            jobs.append(reply.json()["id"])
        with Redis.from_url(redis_url, decode_responses=True) as redis:
            assert redis.lrange(keys.rq_queue(model), 0, -1) == jobs

        def fresh_positions() -> list[int]:
            return [httpx.get(f"{api.url}/v1/jobs/{job}").json()["queue_position"] for job in jobs]

        poll(lambda: fresh_positions() == list(range(posts)), "every process's positions")

        accepted = 'sd3serve_http_requests_total{route="/v1/generate",status="202"}'
        for _ in range(6):
            page = httpx.get(f"{api.url}/metrics").text
            [line] = [line for line in page.splitlines() if line.startswith(accepted)]
            # Whichever process answers the scrape counts every process's POSTs.
            assert float(line.split()[-1]) == posts
