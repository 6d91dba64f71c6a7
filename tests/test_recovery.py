"""Taking back the jobs of lost workers: START's hold, PROGRESS's leave, REQUEUE and the reaper.

Every transition runs against a real redis-server, and RQ's own records of a job (its queue, a
worker's pop and its start of the run) are made by RQ itself, so the reaper is checked against
the data RQ really keeps. A worker's liveness is the age of its latest beat on Redis' clock: a
test makes a worker silent by writing that beat in the past, never by waiting. Races are
hammered from threads released together by a barrier, as in test_jobstore: whichever order Redis
picks, every job ends in one final state at most once.

The liveness tests run the real runner, heartbeat and reaper in this process, with a stand-in
for the pipeline only: its steps block (in time.sleep, which releases the GIL as torch's long
operations do) for longer than the abandonment window.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image
from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.job import JobStatus as RqStatus

from common import jobstore, keys, workers
from common.contract import GenerateParams, JobStatus, Timings
from common.jobstore import (
    CANCELED_RUNNING,
    EVENTS_MAXLEN,
    WORKER_LOST,
    JobRecord,
    Outcome,
    Steer,
    Transitions,
)
from common.results import open_result_store
from service.dev import model_record
from service.queue import JobQueue
from tests.helpers import job_params
from worker import metrics
from worker.main import Heartbeat
from worker.pipeline import BatchEmptied, BatchStepCallback
from worker.recovery import Outage, Reaper
from worker.runner import LEFT, JobRunner
from worker.settings import WorkerSettings
from worker.store import WorkerJobStore, new_worker_id

TTL_S = 600
SILENCE_S = 5.0
RACES = 30  # jobs per hammered race
PARAMS = job_params(
    "sd3-scenes",
    prompt="a small red circle in the center on a white background",
    guidance_scale=2.0,
    seed=7,
)
MODEL = PARAMS.model
CANCELED_QUEUED = "canceled by the client before it started"

Event = tuple[str, dict[str, object]]


@pytest.fixture(scope="module")
def rq(redis_url: str) -> Iterator[Redis]:
    """RQ's own client: RQ wants bytes."""
    with Redis.from_url(redis_url) as client:
        yield client


class Jobs:
    """Jobs made as the API makes them: the record, then the RQ job on the model's queue."""

    def __init__(self, r: Redis, rq: Redis) -> None:
        self.r = r
        self.rq = rq
        self.transitions = Transitions(TTL_S)
        self.queue = JobQueue(rq, job_timeout_s=60, ttl_s=TTL_S)
        self._create = r.register_script(jobstore.CREATE)
        self._cancel = r.register_script(jobstore.CANCEL)

    def create(self, retries: int = 1, params: GenerateParams = PARAMS) -> str:
        job_id = uuid.uuid4().hex
        call = self.transitions.create(job_id, params, retries=retries)
        self._create(keys=call.keys, args=call.args)
        self.queue.enqueue(job_id, MODEL)
        return job_id

    def cancel(self, job_id: str) -> Outcome:
        call = self.transitions.cancel(job_id)
        return jobstore.decode_outcome(self._cancel(keys=call.keys, args=call.args))

    def pop(self) -> Job:
        """What a worker's RQ does first: the next job, moved to RQ's list of popped jobs."""
        found = Queue.dequeue_any([self._rq_queue()], None, connection=self.rq)
        assert found is not None, "the queue is empty"
        return found[0]

    def take(self, name: str = "rq-worker") -> Job:
        """All RQ does for a worker before the task runs: pop the next job, register its run."""
        job = self.pop()
        rq_worker = SimpleWorker([self._rq_queue()], connection=self.rq, name=name)
        rq_worker.prepare_execution(job)
        rq_worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
        return job

    def _rq_queue(self) -> Queue:
        return Queue(keys.queue_name(MODEL), connection=self.rq)


@pytest.fixture(scope="module")
def jobs(r: Redis, rq: Redis) -> Jobs:
    return Jobs(r, rq)


@pytest.fixture(autouse=True)
def fresh_model(rq: Redis) -> None:
    """Each test starts with no job of the model waiting, taken or watched: its pops take its
    own jobs, and a reaper's pass sees only them."""
    rq.delete(
        keys.rq_queue(MODEL),
        keys.rq_dequeued(MODEL),
        keys.rq_started(MODEL),
        keys.running(MODEL),
        keys.dequeued(MODEL),
    )


def worker_store(r: Redis) -> WorkerJobStore:
    """A worker process of its own (a fresh worker id), alive: its beat is now."""
    store = WorkerJobStore(r, TTL_S, worker=new_worker_id("test"), silence_s=SILENCE_S)
    beat(r, store.worker)
    return store


def beat(r: Redis, worker: str, running: str | None = None) -> None:
    """The worker's heartbeat, as its heartbeat thread writes it."""
    beat_keys, args = workers.alive_call(worker, MODEL, [] if running is None else [running])
    r.register_script(workers.ALIVE)(keys=beat_keys, args=args)


def redis_now(r: Redis) -> float:
    seconds, micros = r.time()
    return float(seconds) + micros / 1e6


def silence(r: Redis, worker: str, for_s: float = 2 * SILENCE_S) -> None:
    """Make the worker's latest beat `for_s` old on Redis' clock, as if it had died then."""
    r.zadd(keys.beats(MODEL), {worker: redis_now(r) - for_s})


def reaper(r: Redis, silence_s: float = SILENCE_S) -> Reaper:
    return Reaper(r, MODEL, ttl_s=TTL_S, silence_s=silence_s, outage=Outage())


def reap(r: Redis, job_id: str, limbo_s: float = SILENCE_S) -> Outcome | None:
    return reaper(r).requeue(job_id, silence_s=SILENCE_S, limbo_s=limbo_s)


def record(r: Redis, job_id: str) -> JobRecord:
    fields: dict[str, str] = r.hgetall(keys.job(job_id))  # type: ignore[assignment]
    assert fields, f"job {job_id} has no record"
    return jobstore.decode_record(job_id, fields)


def stream(r: Redis, job_id: str) -> list[Event]:
    entries: list[tuple[str, dict[str, str]]] = r.xrange(keys.events(job_id))  # type: ignore[assignment]
    return [jobstore.decode_event(fields) for _, fields in entries]


def statuses(r: Redis, job_id: str) -> list[str]:
    return [str(data["status"]) for kind, data in stream(r, job_id) if kind == "status"]


def finals(r: Redis, job_id: str) -> int:
    return sum(JobStatus(s).terminal for s in statuses(r, job_id))


def waiting(r: Redis) -> list[str]:
    """The ids on the model's RQ queue, front first."""
    return r.lrange(keys.rq_queue(MODEL), 0, -1)  # type: ignore[return-value]


def rq_runs(r: Redis, job_id: str) -> tuple[list[str], list[str]]:
    """RQ's records of the job's runs: its executions, and its started registry's members."""
    executions: list[str] = r.zrange(keys.rq_executions(job_id), 0, -1)  # type: ignore[assignment]
    started: list[str] = r.zrange(keys.rq_started(MODEL), 0, -1)  # type: ignore[assignment]
    return executions, [m for m in started if m.startswith(f"{job_id}:")]


def rq_status(rq: Redis, job_id: str) -> str:
    return Job.fetch(job_id, connection=rq).get_status().value


def snapshot(r: Redis, job_id: str) -> tuple[object, ...]:
    """The job's record and events, RQ's records of it, and the model's watch lists."""
    return (
        r.hgetall(keys.job(job_id)),
        stream(r, job_id),
        r.hmget(keys.rq_job(job_id), ["status", "worker_name", "started_at"]),  # RQ's text ones
        rq_runs(r, job_id),
        waiting(r),
        r.lrange(keys.rq_dequeued(MODEL), 0, -1),
        r.smembers(keys.running(MODEL)),
        r.hgetall(keys.dequeued(MODEL)),
    )


def running_on(jobs: Jobs, store: WorkerJobStore, retries: int = 1) -> str:
    """A fresh job that `store`'s worker took off the queue and started."""
    job_id = jobs.create(retries)
    assert jobs.take().id == job_id
    assert store.start(job_id) is Outcome.running
    return job_id


# The scripts' own rules


def test_requeue_spells_no_state_name() -> None:
    body = jobstore.REQUEUE.removeprefix(jobstore._PRELUDE)
    assert body != jobstore.REQUEUE
    for state in JobStatus:
        assert not re.search(rf"['\"]{state.value}['\"]", body), state


def test_requeue_call_carries_rq_states_and_errors() -> None:
    call = Transitions(90).requeue("j", MODEL, silence_s=2.5, limbo_s=-1)
    assert call.keys == keys.script_keys("j")
    assert call.args == [
        EVENTS_MAXLEN,
        MODEL,
        "j",
        "2.500000",
        "-1.000000",
        90,
        WORKER_LOST,
        CANCELED_RUNNING,
        RqStatus.QUEUED.value,
        RqStatus.FAILED.value,
    ]
    given_back = Transitions(90).requeue("j", MODEL, silence_s=2.5, limbo_s=-1, giver="w-1")
    assert given_back.args == [*call.args, "w-1"]


# START: the holder


def test_start_records_its_worker_and_watches_the_job(r: Redis, jobs: Jobs) -> None:
    store = worker_store(r)
    job_id = running_on(jobs, store)
    assert r.hget(keys.job(job_id), "worker") == store.worker
    assert job_id in r.smembers(keys.running(MODEL))
    assert record(r, job_id).attempts == 1


def test_start_refuses_a_job_a_live_worker_runs_and_takes_over_a_silent_ones(
    r: Redis, jobs: Jobs
) -> None:
    first, second = worker_store(r), worker_store(r)
    job_id = running_on(jobs, first)
    first.report(job_id, 1, 2)
    before = snapshot(r, job_id)
    assert second.start(job_id) is Outcome.taken
    assert Outcome.taken.status is JobStatus.running
    assert snapshot(r, job_id) == before

    silence(r, first.worker)
    assert second.start(job_id) is Outcome.running  # a retry: the first worker is gone
    job = record(r, job_id)
    assert (job.status, job.attempts, job.progress) == (JobStatus.running, 2, None)
    assert r.hget(keys.job(job_id), "worker") == second.worker


# PROGRESS: go, cancel, leave


def test_progress_tells_a_worker_to_leave_a_job_no_longer_its(r: Redis, jobs: Jobs) -> None:
    holder, other = worker_store(r), worker_store(r)
    job_id = running_on(jobs, holder)
    assert holder.report(job_id, 1, 2) is Steer.go
    before = snapshot(r, job_id)
    assert other.report(job_id, 2, 2) is Steer.leave
    assert other.progress(job_id, 2, 2) is True
    assert snapshot(r, job_id) == before  # no write: no progress, no event
    assert jobs.cancel(job_id) is Outcome.cancel_requested
    assert holder.report(job_id, 2, 2) is Steer.cancel

    silence(r, holder.worker)
    assert reap(r, job_id) is Outcome.canceled
    assert holder.report(job_id, 2, 2) is Steer.leave  # finished meanwhile


# REQUEUE: a running job whose worker is silent


def test_a_silent_workers_job_goes_back_to_the_front_of_its_queue(
    r: Redis, rq: Redis, jobs: Jobs
) -> None:
    store = worker_store(r)
    job_id = running_on(jobs, store)
    store.report(job_id, 1, 2)
    later = jobs.create()
    assert reap(r, job_id) is None  # alive: left alone

    silence(r, store.worker)
    assert reap(r, job_id) is Outcome.queued
    job = record(r, job_id)
    assert (job.status, job.progress, job.started_at, job.attempts) == (
        JobStatus.queued,
        None,
        None,
        1,
    )
    assert r.hget(keys.job(job_id), "worker") is None
    assert stream(r, job_id) == [
        ("status", {"status": "queued"}),
        ("status", {"status": "running"}),
        ("progress", {"step": 1, "total": 2}),
        ("status", {"status": "queued"}),
    ]
    # At the front, ahead of the job queued after it, and queued as RQ records a waiting job,
    # with no run of it left for RQ to find abandoned.
    assert waiting(r) == [job_id, later]
    assert rq_status(rq, job_id) == RqStatus.QUEUED.value
    assert rq_runs(r, job_id) == ([], [])
    assert job_id not in r.smembers(keys.running(MODEL))
    assert reap(r, job_id) is None  # once

    # The next worker takes it first, as its second attempt.
    again = worker_store(r)
    assert jobs.take().id == job_id
    assert again.start(job_id) is Outcome.running
    assert record(r, job_id).attempts == 2
    assert store.report(job_id, 2, 2) is Steer.leave  # the first worker, should it wake


def test_a_live_workers_job_is_left_alone(r: Redis, jobs: Jobs) -> None:
    store = worker_store(r)
    job_id = running_on(jobs, store)
    silence(r, store.worker, for_s=SILENCE_S - 1)  # quiet, but not for long enough
    before = snapshot(r, job_id)
    assert reap(r, job_id) is None
    assert snapshot(r, job_id) == before


@pytest.mark.parametrize("retries", [0, 1])
def test_a_job_whose_retries_are_used_up_fails(
    retries: int, r: Redis, rq: Redis, jobs: Jobs
) -> None:
    job_id = jobs.create(retries)
    for attempt in range(1, retries + 2):
        store = worker_store(r)
        assert jobs.take().id == job_id
        assert store.start(job_id) is Outcome.running
        silence(r, store.worker)
        outcome = reap(r, job_id)
        assert outcome is (Outcome.queued if attempt <= retries else Outcome.failed)
    job = record(r, job_id)
    assert (job.status, job.error, job.attempts) == (JobStatus.failed, WORKER_LOST, retries + 1)
    assert statuses(r, job_id) == ["queued", *["running", "queued"] * retries, "running", "failed"]
    assert 0 < int(r.ttl(keys.job(job_id))) <= TTL_S
    # RQ's record ends with it: failed, expiring, and no run left for RQ to find abandoned.
    assert rq_status(rq, job_id) == RqStatus.FAILED.value
    assert 0 < int(r.ttl(keys.rq_job(job_id))) <= TTL_S
    assert rq_runs(r, job_id) == ([], [])
    assert job_id not in waiting(r)


def test_a_live_worker_that_no_longer_runs_its_job_gives_it_up(r: Redis, jobs: Jobs) -> None:
    """Redis lost the finish of a job (it crashed within a second of it), so the job is still
    marked running on a worker that has moved on: the worker's beats, naming no job, give it up."""
    store = worker_store(r)
    job_id = running_on(jobs, store)
    assert reap(r, job_id) is None  # just started: its beats need not name it yet
    r.hset(keys.job(job_id), "started_at", f"{redis_now(r) - 2 * SILENCE_S:.6f}")
    beat(r, store.worker, running=job_id)
    assert reap(r, job_id) is None  # alive, and running it
    beat(r, store.worker)  # alive, and running nothing
    assert reap(r, job_id) is Outcome.queued
    assert worker_store(r).start(job_id) is Outcome.running  # taken over at once


def test_a_job_canceled_while_its_worker_was_lost_ends_canceled(r: Redis, jobs: Jobs) -> None:
    store = worker_store(r)
    job_id = running_on(jobs, store)
    assert jobs.cancel(job_id) is Outcome.cancel_requested
    silence(r, store.worker)
    assert reap(r, job_id) is Outcome.canceled
    job = record(r, job_id)
    assert (job.status, job.error) == (JobStatus.canceled, CANCELED_RUNNING)
    assert job_id not in waiting(r)


def test_a_job_started_with_no_holder_is_left_to_rq(r: Redis, jobs: Jobs) -> None:
    job_id = jobs.create()
    jobs.take()
    call = Transitions(TTL_S).start(job_id)  # START as a worker that names no holder calls it
    r.register_script(jobstore.START)(keys=call.keys, args=call.args)
    before = snapshot(r, job_id)
    assert reap(r, job_id) is None
    assert snapshot(r, job_id) == before


# REQUEUE: a job popped off the queue that no worker started


@pytest.mark.parametrize("registered", [False, True], ids=["popped", "run-registered"])
def test_a_popped_job_never_started_goes_back_after_its_limbo(
    registered: bool, r: Redis, rq: Redis, jobs: Jobs
) -> None:
    job_id = jobs.create()
    later = jobs.create()
    assert (jobs.take() if registered else jobs.pop()).id == job_id
    assert reap(r, job_id) is None  # first seen now
    assert r.hexists(keys.dequeued(MODEL), job_id)
    assert reap(r, job_id) is None  # not for long enough yet

    # Seen longer ago than any limbo of 0 s: back at the front, nothing else changed.
    assert reap(r, job_id, limbo_s=0) is Outcome.queued
    assert waiting(r) == [job_id, later]
    assert statuses(r, job_id) == ["queued"]
    assert record(r, job_id).attempts == 0
    assert rq_status(rq, job_id) == RqStatus.QUEUED.value
    assert rq_runs(r, job_id) == ([], [])
    assert r.lrange(keys.rq_dequeued(MODEL), 0, -1) == []
    assert not r.hexists(keys.dequeued(MODEL), job_id)
    assert reap(r, job_id, limbo_s=0) is None  # waiting in line now


def test_a_waiting_job_is_never_moved(r: Redis, jobs: Jobs) -> None:
    first, second = jobs.create(), jobs.create()
    for job_id in (first, second):
        assert reap(r, job_id, limbo_s=0) is None
    assert waiting(r) == [first, second]
    assert not r.exists(keys.dequeued(MODEL))


def test_a_finished_job_is_dropped_from_the_watch(r: Redis, jobs: Jobs) -> None:
    store = worker_store(r)
    job_id = running_on(jobs, store)
    store.finish(job_id, JobStatus.succeeded, timings=Timings(), image_count=1)
    silence(r, store.worker)
    assert reap(r, job_id) is None
    assert statuses(r, job_id) == ["queued", "running", "succeeded"]
    assert job_id not in r.smembers(keys.running(MODEL))


# The races, hammered


Side = Callable[[str, threading.Barrier], object]


def hammer(job_ids: list[str], *sides: Side) -> list[tuple[str, list[object]]]:
    """Run every side on every job at once; returns each job's results, in `sides` order."""
    with ThreadPoolExecutor(max_workers=8 * len(sides)) as pool:
        runs: list[tuple[str, list[Future[object]]]] = []
        for job_id in job_ids:
            barrier = threading.Barrier(len(sides), timeout=10)
            runs.append((job_id, [pool.submit(side, job_id, barrier) for side in sides]))
        return [(job_id, [f.result() for f in futures]) for job_id, futures in runs]


def reaping(r: Redis) -> Side:
    the_reaper = reaper(r)

    def side(job_id: str, barrier: threading.Barrier) -> object:
        the_reaper.redis.ping()  # a pooled connection ready before the race
        barrier.wait()
        return the_reaper.requeue(job_id, silence_s=SILENCE_S, limbo_s=SILENCE_S)

    return side


def silent_jobs(r: Redis, jobs: Jobs) -> list[str]:
    """Jobs each started by a worker that has since gone silent."""
    job_ids = []
    for _ in range(RACES):
        store = worker_store(r)
        job_ids.append(running_on(jobs, store))
        silence(r, store.worker)
    return job_ids


def test_a_late_finish_racing_the_reaper_ends_the_job_once(r: Redis, jobs: Jobs) -> None:
    """A worker taken for dead finishes after all: its result stands, whenever it lands."""
    late = WorkerJobStore(r, TTL_S)

    def finishing(job_id: str, barrier: threading.Barrier) -> object:
        late.redis.ping()
        barrier.wait()
        return late.finish(job_id, JobStatus.succeeded, timings=Timings(), image_count=1)

    for job_id, (requeued, finished) in hammer(silent_jobs(r, jobs), reaping(r), finishing):
        assert finished is Outcome.succeeded
        assert record(r, job_id).status is JobStatus.succeeded
        if requeued is None:  # the finish came first
            assert statuses(r, job_id) == ["queued", "running", "succeeded"]
        else:
            assert requeued is Outcome.queued
            assert statuses(r, job_id) == ["queued", "running", "queued", "succeeded"]
            # The copy put back is not run again: its next START finds it over.
            assert worker_store(r).start(job_id) is Outcome.succeeded
        assert finals(r, job_id) == 1


def test_a_cancel_racing_the_reaper_ends_the_job_once(r: Redis, jobs: Jobs) -> None:
    def canceling(job_id: str, barrier: threading.Barrier) -> object:
        barrier.wait()
        return jobs.cancel(job_id)

    for job_id, (reaped, canceled) in hammer(silent_jobs(r, jobs), reaping(r), canceling):
        job = record(r, job_id)
        assert job.status is JobStatus.canceled
        if canceled is Outcome.cancel_requested:  # the cancel came first, seen by the reaper
            assert reaped is Outcome.canceled
            assert (job.error, statuses(r, job_id)) == (
                CANCELED_RUNNING,
                ["queued", "running", "canceled"],
            )
        else:  # put back first, then canceled while it waited
            assert (reaped, canceled) == (Outcome.queued, Outcome.canceled)
            assert (job.error, statuses(r, job_id)) == (
                CANCELED_QUEUED,
                ["queued", "running", "queued", "canceled"],
            )
        assert finals(r, job_id) == 1


def test_two_reapers_put_a_job_back_once(r: Redis, jobs: Jobs) -> None:
    job_ids = silent_jobs(r, jobs)
    for job_id, outcomes in hammer(job_ids, reaping(r), reaping(r)):
        assert sorted(map(str, outcomes)) == ["None", "queued"]
        assert statuses(r, job_id) == ["queued", "running", "queued"]
    assert sorted(waiting(r)) == sorted(job_ids)  # each once


def test_a_restart_racing_the_reaper_runs_the_job_once(r: Redis, jobs: Jobs) -> None:
    """Another worker starts a job whose worker is gone while a reaper takes it back."""
    taker = worker_store(r)

    def starting(job_id: str, barrier: threading.Barrier) -> object:
        taker.redis.ping()
        barrier.wait()
        return taker.start(job_id)

    results = hammer(silent_jobs(r, jobs), reaping(r), starting)
    beat(r, taker.worker)
    for job_id, (reaped, started) in results:
        assert started is Outcome.running
        job = record(r, job_id)
        assert (job.status, job.attempts) == (JobStatus.running, 2)
        assert r.hget(keys.job(job_id), "worker") == taker.worker
        expected = ["queued", "running", "running"]
        if reaped is not None:
            assert reaped is Outcome.queued
            expected = ["queued", "running", "queued", "running"]
        assert statuses(r, job_id) == expected
        assert reap(r, job_id) is None  # held by a live worker now


# The reaper's pass


def await_uptime(r: Redis, seconds: float) -> None:
    """Wait until the module's redis-server has been up for `seconds` (a reaper's condition)."""
    deadline = time.monotonic() + 30
    while int(r.info("server")["uptime_in_seconds"]) < seconds:
        assert time.monotonic() < deadline, "redis-server's uptime did not grow"
        time.sleep(0.1)


def test_a_pass_finds_every_job_a_lost_worker_took(r: Redis, jobs: Jobs) -> None:
    await_uptime(r, 1)
    store = worker_store(r)
    started = running_on(jobs, store)
    popped = jobs.create()
    assert jobs.pop().id == popped
    registered = jobs.create()
    assert jobs.take().id == registered
    waits = jobs.create()
    the_reaper = reaper(r, silence_s=1)
    assert the_reaper.candidates() == {started, popped, registered}  # not `waits`

    silence(r, store.worker)
    assert the_reaper.reap() == {started: Outcome.queued}  # the popped ones: first noted
    r.hset(keys.dequeued(MODEL), mapping={popped: 0, registered: 0})  # noted long ago
    assert the_reaper.reap() == {popped: Outcome.queued, registered: Outcome.queued}
    assert set(waiting(r)) == {started, popped, registered, waits}
    assert the_reaper.reap() == {}


def test_a_pass_waits_until_redis_has_answered_for_a_whole_silence(r: Redis, jobs: Jobs) -> None:
    await_uptime(r, 1)
    store = worker_store(r)
    job_id = running_on(jobs, store)
    silence(r, store.worker)
    the_reaper = reaper(r, silence_s=1)
    the_reaper.outage.failed(ConnectionError("down"))
    # Every worker missed its beats in the outage: none is taken for gone until all had time.
    assert the_reaper.reap() == {}
    the_reaper.outage.ok()
    assert the_reaper.reap() == {}  # back only just now
    assert record(r, job_id).status is JobStatus.running


# Liveness: a step longer than the window


WINDOW_S = 1.0  # SD3SERVE_WORKER_LOST_AFTER_S
HEARTBEAT_S = 0.2
STEP_S = 2.5 * WINDOW_S


class SlowPipeline:
    """The one stand-in: each step blocks longer than the window, releasing the GIL."""

    def __init__(self) -> None:
        self.steps_run = 0

    def generate_batch(
        self, jobs: Sequence[GenerateParams], on_step: BatchStepCallback | None = None
    ) -> list[list[Image.Image] | None]:
        (params,) = jobs
        for step in range(1, params.steps + 1):
            time.sleep(STEP_S)
            self.steps_run += 1
            if on_step is not None and on_step(step, params.steps):
                raise BatchEmptied()  # its one job dropped, as the real pipeline does
        return [[Image.new("RGB", (params.width, params.height), "white")]]


class ReaperLoop:
    """Another worker's reaper, looking again and again while the job runs."""

    def __init__(self, r: Redis, silence_s: float) -> None:
        self.reaper = reaper(r, silence_s)
        self.outcomes: dict[str, Outcome] = {}
        self.passes = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S / 4):
            self.outcomes.update(self.reaper.reap())
            self.passes += 1

    def __enter__(self) -> ReaperLoop:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)


@pytest.fixture
def liveness(r: Redis, tmp_path: Path) -> tuple[WorkerSettings, JobRunner]:
    settings = WorkerSettings(
        heartbeat_s=HEARTBEAT_S, worker_lost_after_s=WINDOW_S, worker_name="liveness"
    )
    store = WorkerJobStore(
        r, TTL_S, worker=new_worker_id(settings.worker_name), silence_s=settings.silence_s
    )
    runner = JobRunner(
        SlowPipeline(),
        store,
        open_result_store(f"file://{tmp_path}"),
        metrics.JobLabels(MODEL, frozenset(), frozenset()),
    )
    await_uptime(r, settings.silence_s)
    return settings, runner


def heartbeat(r: Redis, settings: WorkerSettings, runner: JobRunner) -> Heartbeat:
    return Heartbeat(
        settings,
        r,
        model_record(MODEL),
        runner.store.worker,
        lambda: runner.held,
        lambda redis: None,
        Outage(),
    )


def test_a_step_longer_than_the_window_never_counts_as_a_lost_worker(
    r: Redis,
    jobs: Jobs,
    liveness: tuple[WorkerSettings, JobRunner],
) -> None:
    settings, runner = liveness
    job_id = jobs.create()
    assert jobs.take().id == job_id
    beats = heartbeat(r, settings, runner)
    beats.beat()
    beats.start()
    try:
        with ReaperLoop(r, settings.silence_s) as other:
            started = time.monotonic()
            assert runner.run(job_id) == "succeeded"
            took = time.monotonic() - started
    finally:
        beats.stop()
    assert took > PARAMS.steps * STEP_S > 2 * WINDOW_S
    assert other.passes > 10 and other.outcomes == {}  # it looked, all along, and left it
    job = record(r, job_id)
    assert (job.status, job.attempts) == (JobStatus.succeeded, 1)
    assert statuses(r, job_id) == ["queued", "running", "succeeded"]


def test_a_worker_whose_heartbeat_stopped_loses_its_job_and_leaves_it(
    r: Redis,
    jobs: Jobs,
    liveness: tuple[WorkerSettings, JobRunner],
) -> None:
    """The same job and window with the heartbeat frozen: the reaper takes the job back during
    the first long step, and the worker, told at its next step, leaves it without a write."""
    settings, runner = liveness
    job_id = jobs.create()
    assert jobs.take().id == job_id
    heartbeat(r, settings, runner).beat()  # its last sign of life
    with ReaperLoop(r, settings.silence_s) as other:
        assert runner.run(job_id) == LEFT
    assert other.outcomes == {job_id: Outcome.queued}
    assert isinstance(runner.pipeline, SlowPipeline) and runner.pipeline.steps_run == 1
    job = record(r, job_id)
    assert (job.status, job.attempts, job.progress) == (JobStatus.queued, 1, None)
    assert statuses(r, job_id) == ["queued", "running", "queued"]
    assert waiting(r)[0] == job_id
