"""Chaos: workers killed or stopped mid-job, and Redis killed under running and queued jobs.

One deployment serves every case: a redis-server with its append-only file (killed and started
again on the same port and data), the API, and worker processes on the tiny model, replaced as
the cases kill them. Every case counts the jobs it submitted and ends by checking that each of
them reached a final state exactly once: one final `status` event in its stream, and no copy of
it left on the queue to run again. A job is known to be mid-run by its progress events.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from common import jobstore, keys
from common.contract import JobStatus
from service.dev import Stack, free_port
from tests.harness import (
    START_TIMEOUT_S,
    TINY_MODEL,
    Api,
    base_env,
    poll,
    settings_env,
    start_api,
    start_redis,
    start_worker,
)
from tests.helpers import submit

pytestmark = [pytest.mark.stack, pytest.mark.chaos]

HEARTBEAT_S = 0.5
# SD3SERVE_WORKER_LOST_AFTER_S: short, so a lost worker's job comes back fast.
WINDOW_S = 4.0
# Slack for a loaded CI machine on top of the window: the reaper's own pass, the next worker's
# pop and START.
MARGIN_S = 4.0
# The scenario: Redis down this long.
OUTAGE_S = 10.0
# The bound on a worker's exit when stopped during an outage.
STOP_BOUND_S = 10.0
JOB_TIMEOUT_S = 180.0
# Long enough on the tiny model to be caught mid-run: 0.1 to 0.3 s a step on a CI core.
LONG: dict[str, Any] = {"prompt": "a long job", "width": 384, "height": 384, "steps": 30}
# Four of these run as one batch (SD3SERVE_MAX_BATCH's default); not batched with LONG.
BATCHED: dict[str, Any] = {"prompt": "a batched job", "width": 384, "height": 384, "steps": 29}
SHORT: dict[str, Any] = {"prompt": "a short job", "width": 64, "height": 64, "steps": 2}


@dataclass
class Chaos:
    work: Path
    stack: Stack  # the API and the workers
    redis_port: int
    redis_stacks: list[Stack]  # each start of redis-server its own, so a killed one is no error
    env: dict[str, str]
    api: Api
    workers: dict[str, tuple[subprocess.Popen[bytes], str]] = field(default_factory=dict)
    started: int = 0

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start_redis(self) -> None:
        stack = Stack()
        self.redis_stacks.append(stack)
        start_redis(stack, self.work, self.redis_port)

    def kill_redis(self) -> None:
        """Crash redis-server, once all it holds is on disk.

        The append-only file is synced every second, so a crash loses up to a second of writes,
        as a production Redis does; the cases are about the workers, so the jobs' state up to
        the crash is first made durable (an AOF rewrite, fsynced when it completes).
        """
        with Redis.from_url(self.redis_url, decode_responses=True) as r:
            r.bgrewriteaof()

            def rewritten() -> bool:
                info = r.info("persistence")
                busy = info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]
                return not busy and info["aof_last_bgrewrite_status"] == "ok"

            poll(rewritten, "the append-only file rewritten", 30)
        _, redis = self.redis_stacks[-1].children[0]
        redis.kill()
        redis.wait(timeout=30)

    def start_worker(self) -> str:
        """A new worker, not waited for: the pool replacing one, as Kubernetes would."""
        self.started += 1
        name = f"chaos-{self.started}"
        worker = start_worker(self.stack, self.env, name)
        self.workers[name] = (worker.process, worker.metrics_url)
        return name

    def live(self) -> list[str]:
        return [name for name, (process, _) in self.workers.items() if process.poll() is None]

    def ensure_workers(self, count: int) -> list[str]:
        """`count` warm workers, starting what is missing; returns their names."""
        for _ in range(count - len(self.live())):
            self.start_worker()
        names = self.live()[:count]
        poll(lambda: all(self.warm(name) for name in names), "warm workers", START_TIMEOUT_S)
        return names

    def warm(self, name: str) -> bool:
        return httpx.get(f"{self.workers[name][1]}/readyz").status_code == 200

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return self.workers[name][0]


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Chaos]:
    work = tmp_path_factory.mktemp("chaos")
    stack = Stack()
    chaos = None
    try:
        port = free_port()
        redis_stack = Stack()
        url = start_redis(redis_stack, work, port)
        env = base_env(url, work / "results", model_dir) | settings_env(
            heartbeat_s=HEARTBEAT_S, worker_lost_after_s=WINDOW_S
        )
        api = start_api(stack, env)
        chaos = Chaos(work, stack, port, [redis_stack], env, api)
        with closing(api.client):
            # Two from the start, loading side by side.
            chaos.start_worker()
            chaos.start_worker()
            yield chaos
    finally:
        stack.stop()
        for redis_stack in chaos.redis_stacks if chaos else []:
            redis_stack.stop()


class Ledger:
    """The jobs a case submitted, all of which the API must accept and finish exactly once."""

    def __init__(self, chaos: Chaos) -> None:
        self.chaos = chaos
        self.jobs: list[str] = []

    def submit(self, **body: Any) -> str:
        reply = submit(self.chaos.api, **body)
        assert reply.status_code == 202, reply.text
        job_id: str = reply.json()["id"]
        self.jobs.append(job_id)
        return job_id

    def settle(self, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, jobstore.JobRecord]:
        """Wait until every job is final and no copy of one waits to run; check each ended once."""
        with Redis.from_url(self.chaos.redis_url, decode_responses=True) as r:

            def final() -> bool:
                return all(status(r, job_id).terminal for job_id in self.jobs)

            poll(final, "every job final", timeout_s)
            poll(lambda: r.llen(keys.rq_queue(TINY_MODEL)) == 0, "an empty queue", timeout_s)
            for job_id in self.jobs:
                assert finals(r, job_id) == 1, (job_id, statuses(r, job_id))
            return {job_id: record(r, job_id) for job_id in self.jobs}


def record(r: Redis, job_id: str) -> jobstore.JobRecord:
    fields: dict[str, str] = r.hgetall(keys.job(job_id))  # type: ignore[assignment]
    assert fields, f"job {job_id} is lost"
    return jobstore.decode_record(job_id, fields)


def status(r: Redis, job_id: str) -> JobStatus:
    return record(r, job_id).status


def events(r: Redis, job_id: str) -> list[tuple[str, str, dict[str, object]]]:
    """(entry id, type, payload) of each event; an entry id starts with its Redis time in ms."""
    entries: list[tuple[str, dict[str, str]]] = r.xrange(keys.events(job_id))  # type: ignore[assignment]
    return [(entry, *jobstore.decode_event(fields)) for entry, fields in entries]


def statuses(r: Redis, job_id: str) -> list[str]:
    return [str(data["status"]) for _, kind, data in events(r, job_id) if kind == "status"]


def finals(r: Redis, job_id: str) -> int:
    return sum(JobStatus(s).terminal for s in statuses(r, job_id))


def running(r: Redis, job_id: str) -> bool:
    """Mid-run: started, and a step reported since."""
    found = events(r, job_id)
    return bool(found) and found[-1][1] == "progress"


def holder(r: Redis, job_id: str) -> str:
    """The name of the worker running the job (its id is the name and a run's random part)."""
    worker = r.hget(keys.job(job_id), "worker")
    assert isinstance(worker, str), f"job {job_id} is not held"
    return worker.rpartition(":")[0]


def await_mid_run(chaos: Chaos, *job_ids: str) -> None:
    with Redis.from_url(chaos.redis_url, decode_responses=True) as r:
        poll(lambda: all(running(r, j) for j in job_ids), "the jobs to be mid-run", JOB_TIMEOUT_S)


def test_a_worker_stopped_mid_job_finishes_it_and_exits_0(chaos: Chaos) -> None:
    chaos.ensure_workers(1)
    ledger = Ledger(chaos)
    job_id = ledger.submit(**LONG)
    await_mid_run(chaos, job_id)
    with Redis.from_url(chaos.redis_url, decode_responses=True) as r:
        name = holder(r, job_id)
    chaos.process(name).send_signal(signal.SIGTERM)
    chaos.start_worker()  # for the next cases
    assert chaos.process(name).wait(timeout=JOB_TIMEOUT_S) == 0
    done = ledger.settle()[job_id]
    assert (done.status, done.attempts) == (JobStatus.succeeded, 1)


def test_a_job_whose_worker_is_killed_finishes_on_another_within_the_window(
    chaos: Chaos,
) -> None:
    chaos.ensure_workers(2)
    ledger = Ledger(chaos)
    job_id = ledger.submit(**LONG)
    await_mid_run(chaos, job_id)
    with Redis.from_url(chaos.redis_url, decode_responses=True) as r:
        name = holder(r, job_id)
        chaos.process(name).kill()  # no clean-up at all, as in a crash or an OOM kill
        killed_at_ms = time.time() * 1000
        chaos.process(name).wait(timeout=30)
        chaos.start_worker()  # for the next cases
        done = ledger.settle()[job_id]
        assert (done.status, done.attempts) == (JobStatus.succeeded, 2)
        assert statuses(r, job_id) == ["queued", "running", "queued", "running", "succeeded"]
        # Taken back (the second `queued`) within the window of the kill, plus the margin.
        back = [e for e, kind, data in events(r, job_id) if data.get("status") == "queued"][1]
        back_after_s = (int(back.partition("-")[0]) - killed_at_ms) / 1000
        assert back_after_s < WINDOW_S + MARGIN_S, back_after_s
        assert holder(r, job_id) != name  # the other worker ran it


def test_a_worker_killed_with_a_batch_in_flight_leaves_every_job_of_it_to_run_again(
    chaos: Chaos,
) -> None:
    (keep,) = chaos.ensure_workers(1)
    for name in chaos.live():  # one worker: it takes the whole batch
        if name != keep:
            chaos.process(name).terminate()
            assert chaos.process(name).wait(timeout=JOB_TIMEOUT_S) == 0
    ledger = Ledger(chaos)
    blocker = ledger.submit(**LONG)
    await_mid_run(chaos, blocker)  # the batch queues up behind it
    batch = [ledger.submit(**BATCHED, seed=seed) for seed in range(4)]
    with Redis.from_url(chaos.redis_url, decode_responses=True) as r:

        def batch_started() -> bool:
            return all(status(r, job_id) is JobStatus.running for job_id in batch)

        poll(batch_started, "the batch to start", JOB_TIMEOUT_S)
        assert {holder(r, job_id) for job_id in batch} == {keep}
        chaos.process(keep).kill()
        chaos.process(keep).wait(timeout=30)
        chaos.start_worker()
        done = ledger.settle()
        for job_id in batch:
            assert (done[job_id].status, done[job_id].attempts) == (JobStatus.succeeded, 2)
            assert statuses(r, job_id) == ["queued", "running", "queued", "running", "succeeded"]


def test_workers_ride_out_redis_down_for_10_s(chaos: Chaos) -> None:
    names = chaos.ensure_workers(2)
    ledger = Ledger(chaos)
    long_jobs = [ledger.submit(**LONG) for _ in names]
    queued = [ledger.submit(**SHORT) for _ in range(2)]
    await_mid_run(chaos, *long_jobs)
    chaos.kill_redis()
    time.sleep(OUTAGE_S)  # the scenario: Redis is down this long
    assert set(names) <= set(chaos.live())  # no worker gave up
    chaos.start_redis()
    done = ledger.settle()
    assert all(job.status is JobStatus.succeeded for job in done.values()), done
    assert {job_id: done[job_id].attempts for job_id in queued} == dict.fromkeys(queued, 1)
    assert set(names) <= set(chaos.live())
    for name in names:  # each warm again: heartbeats back, jobs taken
        url = chaos.workers[name][1]
        assert httpx.get(f"{url}/readyz").json() == {"warm": True, "redis": True}
    after = ledger.submit(**SHORT)
    assert ledger.settle()[after].status is JobStatus.succeeded


def test_a_worker_stopped_during_an_outage_exits_and_its_job_is_recovered(
    chaos: Chaos,
) -> None:
    chaos.ensure_workers(2)
    ledger = Ledger(chaos)
    job_id = ledger.submit(**LONG)
    await_mid_run(chaos, job_id)
    with Redis.from_url(chaos.redis_url, decode_responses=True) as r:
        name = holder(r, job_id)
    chaos.kill_redis()
    stopping = chaos.process(name)
    stopping.send_signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    assert stopping.wait(timeout=STOP_BOUND_S) == 0
    assert time.monotonic() - stopped_at < STOP_BOUND_S
    chaos.start_redis()
    # Its job, left running on a worker gone for good, is taken back and run again.
    done = ledger.settle()[job_id]
    assert (done.status, done.attempts) == (JobStatus.succeeded, 2)


# The durability promise: a job accepted a second or more before Redis dies survives it
# (appendfsync everysec). So the case waits this long after its last acceptance, then kills.
AOF_SYNC_S = 1.5


def test_redis_killed_and_restarted_on_its_aof_loses_no_accepted_job(chaos: Chaos) -> None:
    """Queued, running and finished jobs; kill -9 with no rewrite or save first: only the
    append-only file, synced every second, brings them back."""
    chaos.ensure_workers(1)
    ledger = Ledger(chaos)
    finished = ledger.submit(**SHORT)
    with Redis.from_url(chaos.redis_url, decode_responses=True) as r:
        poll(lambda: status(r, finished).terminal, "a finished job", JOB_TIMEOUT_S)
    image = chaos.api.client.get(f"/v1/jobs/{finished}/images/0")
    assert image.status_code == 200
    running_job = ledger.submit(**LONG)
    queued = [ledger.submit(**SHORT) for _ in range(2)]
    await_mid_run(chaos, running_job)
    time.sleep(AOF_SYNC_S)  # the scenario: every acceptance is a second old at the kill
    _, redis = chaos.redis_stacks[-1].children[0]
    redis.kill()
    redis.wait(timeout=30)
    chaos.start_redis()
    done = ledger.settle()
    assert all(job.status is JobStatus.succeeded for job in done.values()), done
    again = chaos.api.client.get(f"/v1/jobs/{finished}")
    assert again.status_code == 200 and again.json()["status"] == "succeeded"
    assert chaos.api.client.get(f"/v1/jobs/{finished}/images/0").content == image.content
    assert {job_id: done[job_id].attempts for job_id in queued} == dict.fromkeys(queued, 1)


def test_the_api_killed_mid_request_loses_nothing_and_a_retry_returns_the_same_job(
    chaos: Chaos,
) -> None:
    """A client held by `Prefer: wait` sees its connection die with the API; its retry with
    the same Idempotency-Key on a new API process gets the job it had created, not a second."""
    chaos.ensure_workers(1)
    body = {**LONG, "seed": 7}
    key = {"Idempotency-Key": f"chaos-{time.time_ns()}", "Prefer": "wait=60"}
    with Redis.from_url(chaos.redis_url, decode_responses=True) as r:
        jobs_before = set(r.scan_iter(keys.job("*")))
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(chaos.api.client.post, "/v1/generate", json=body, headers=key)

            def created() -> set[str]:
                return {k for k in r.scan_iter(keys.job("*")) if not k.endswith(":events")}

            poll(
                lambda: held.done() or len(created() - jobs_before) == 1, "the held job created", 60
            )
            assert not held.done(), held.result().text
            [job_key] = created() - jobs_before
            job_id = job_key.removeprefix(keys.job(""))
            await_mid_run(chaos, job_id)
            [api_process] = [p for name, p in chaos.stack.children if name == "api"]
            api_process.kill()
            api_process.wait(timeout=30)
            with pytest.raises(httpx.TransportError):
                held.result(timeout=60)
        replacement = Stack()
        chaos.redis_stacks.append(replacement)  # stopped with the others at the end
        api = start_api(replacement, chaos.env)
        with closing(api.client):
            retry = api.client.post("/v1/generate", json=body, headers=key)
            assert retry.status_code in (200, 202), retry.text
            assert retry.json()["id"] == job_id
            poll(lambda: status(r, job_id).terminal, "the job final", JOB_TIMEOUT_S)
            assert status(r, job_id) is JobStatus.succeeded and finals(r, job_id) == 1
            assert created() - jobs_before == {job_key}  # no second job
