"""The per-process event reader: against a real redis-server, then through the real API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from common import jobstore
from common.contract import JobStatus, Timings
from service.dev import publish_idle_model
from service.fanout import EventHub
from service.store import EventEntry
from tests.harness import deployment, poll, settings_env
from tests.helpers import job_params
from worker.store import WorkerJobStore

PARAMS = job_params("m")
# Far longer than any wait below: a subscriber that depended on the reader's timeout to be
# read would fail these tests rather than pass slowly.
LONG_BLOCK_MS = 120_000
WAIT_S = 30


@pytest.fixture(scope="module")
def worker(redis_url: str) -> Iterator[WorkerJobStore]:
    with Redis.from_url(redis_url, decode_responses=True) as r:
        yield WorkerJobStore(r, 3600)


def new_job(worker: WorkerJobStore) -> str:
    job_id = uuid.uuid4().hex
    call = worker.transitions.create(job_id, PARAMS)
    worker.redis.register_script(jobstore.CREATE)(keys=call.keys, args=call.args)
    return job_id


def kinds(entries: list[EventEntry]) -> list[tuple[str, dict[str, object]]]:
    return [(kind, payload) for _, kind, payload in entries]


async def take(queue: asyncio.Queue[EventEntry], n: int) -> list[EventEntry]:
    async with asyncio.timeout(WAIT_S):
        return [await queue.get() for _ in range(n)]


def hub_for(redis_url: str, max_streams: int = 100) -> EventHub:
    return EventHub(redis_url, max_streams, block_ms=LONG_BLOCK_MS)


def test_history_then_live_in_order_for_early_and_late_subscribers(
    redis_url: str, worker: WorkerJobStore
) -> None:
    job_id = new_job(worker)

    async def scenario() -> None:
        hub = hub_for(redis_url)
        try:
            async with hub.subscribe(job_id) as early:
                assert kinds(await take(early, 1)) == [("status", {"status": "queued"})]
                # The reader is now blocked on this job's stream; new entries wake it.
                await asyncio.to_thread(worker.start, job_id)
                await asyncio.to_thread(worker.progress, job_id, 1, 2)
                assert [k for k, _ in kinds(await take(early, 2))] == ["status", "progress"]
                async with hub.subscribe(job_id) as late:
                    # A second client of the same job replays what was read, then goes live.
                    assert [k for k, _ in kinds(await take(late, 3))] == [
                        "status",
                        "status",
                        "progress",
                    ]
                    await asyncio.to_thread(
                        worker.finish, job_id, JobStatus.succeeded, timings=Timings()
                    )
                    for queue in (early, late):
                        assert kinds(await take(queue, 1)) == [("status", {"status": "succeeded"})]
                assert hub.open_streams == 1
            assert hub.open_streams == 0
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_a_new_subscription_wakes_a_reader_blocked_on_other_streams(
    redis_url: str, worker: WorkerJobStore
) -> None:
    """The reader blocks for two minutes here; only the wake stream can bring the new job in."""
    first, second = new_job(worker), new_job(worker)

    async def scenario() -> None:
        hub = hub_for(redis_url)
        try:
            async with hub.subscribe(first) as a:
                await take(a, 1)  # the reader has read `first` and blocks on it again
                async with hub.subscribe(second) as b:
                    assert kinds(await take(b, 1)) == [("status", {"status": "queued"})]
                    await asyncio.to_thread(worker.start, second)
                    assert kinds(await take(b, 1)) == [("status", {"status": "running"})]
        finally:
            await hub.close()

    asyncio.run(scenario())


def test_many_subscribers_share_one_redis_connection(
    redis_url: str, worker: WorkerJobStore
) -> None:
    jobs = [new_job(worker) for _ in range(50)]
    subscribers = 300

    async def scenario() -> int:
        hub = hub_for(redis_url, max_streams=subscribers)
        admin = AsyncRedis.from_url(redis_url, decode_responses=True)
        ready = asyncio.Event()
        joined = 0

        async def client(job_id: str) -> list[EventEntry]:
            nonlocal joined
            async with hub.subscribe(job_id) as queue:
                first = await take(queue, 1)
                joined += 1
                if joined == subscribers:
                    ready.set()
                return first + await take(queue, 1)

        try:
            before = len(await admin.client_list())
            tasks = [asyncio.create_task(client(jobs[i % len(jobs)])) for i in range(subscribers)]
            async with asyncio.timeout(WAIT_S):
                await ready.wait()
            connections = len(await admin.client_list()) - before
            for job_id in jobs:
                await asyncio.to_thread(worker.start, job_id)
            for result in await asyncio.gather(*tasks):
                assert [p["status"] for _, p in kinds(result)] == ["queued", "running"]
            return connections
        finally:
            await admin.aclose()
            await hub.close()

    # The hub's reader and its waker, whatever the number of clients.
    assert asyncio.run(scenario()) <= 2


@pytest.mark.stack
def test_stream_limit_refuses_new_streams_only(tmp_path: Path, model_dir: Path) -> None:
    """Past SD3SERVE_MAX_STREAMS, SSE gets 503 + Retry-After and `Prefer: wait` answers at once;
    submitting and reading jobs is unaffected."""
    with deployment(tmp_path, model_dir, settings_env(max_streams=2)) as d:
        publish_idle_model(d.redis_url, "idle")  # known, never run: its jobs stay queued
        client = d.api.client
        ids = [client.post("/v1/generate", json={"prompt": "x"}).json()["id"] for _ in range(3)]
        with (
            httpx.Client(base_url=d.api.url, timeout=30) as c1,
            httpx.Client(base_url=d.api.url, timeout=30) as c2,
            c1.stream("GET", f"/v1/jobs/{ids[0]}/events") as s1,
            c2.stream("GET", f"/v1/jobs/{ids[1]}/events") as s2,
        ):
            # Held, not dropped: a discarded line iterator closes its response.
            lines = [stream.iter_lines() for stream in (s1, s2)]
            for stream, line in zip((s1, s2), lines, strict=True):
                assert stream.status_code == 200
                assert next(line).startswith("event: status")
            refused = client.get(f"/v1/jobs/{ids[2]}/events")
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "too_many_streams"
            assert int(refused.headers["Retry-After"]) > 0
            waited = client.post("/v1/generate", json={"prompt": "y"}, headers={"Prefer": "wait=5"})
            assert waited.status_code == 202 and "Preference-Applied" not in waited.headers
            assert client.get(f"/v1/jobs/{ids[2]}").json()["status"] == "queued"

        # The two streams closed: a new one is admitted again, once the server has seen the
        # disconnects (it learns of them asynchronously).
        def admitted() -> bool:
            with client.stream("GET", f"/v1/jobs/{ids[2]}/events") as again:
                return again.status_code == 200

        poll(admitted, "a stream admitted after the others closed", 30)
