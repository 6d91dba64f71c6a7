"""The progress reporter against a real redis-server: coalesced writes off the caller's thread,
cancel and leave seen between steps, and a Redis outage that costs the caller nothing.

Writes are counted as the progress events they leave in the job's stream; the reporter's own
thread is left out (an interval of an hour) wherever a count must not depend on timing, and
`flush` is called instead. Every wait for the thread polls Redis or the flag with a deadline.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from common import jobstore, keys
from common.contract import JobStatus, Timings
from common.jobstore import Outcome, Steer, Transitions
from service import dev
from service.dev import Stack, free_port
from tests.harness import poll
from tests.helpers import job_params
from worker.progress import ProgressReporter
from worker.recovery import Outage, connect
from worker.store import WorkerJobStore, new_worker_id

TTL_S = 600
NEVER_S = 3600.0  # an interval the reporter's thread never reaches within a test
QUICK_S = 0.02
PARAMS = job_params(
    "sd3-scenes",
    prompt="a small red circle in the center on a white background",
    steps=8,
    guidance_scale=2.0,
    seed=7,
)
TRANSITIONS = Transitions(TTL_S)

Event = tuple[str, dict[str, object]]


def worker_store(url: str) -> WorkerJobStore:
    """A worker process's store, with the client a worker makes (one that fails fast)."""
    return WorkerJobStore(connect(url, decode=True), TTL_S, worker=new_worker_id("test"))


@pytest.fixture
def store(redis_url: str) -> Iterator[WorkerJobStore]:
    store = worker_store(redis_url)
    with store.redis:
        yield store


def reporter(store: WorkerJobStore, interval_s: float, outage: Outage | None = None) -> Reporter:
    return Reporter(store, outage or Outage(), interval_s=interval_s)


class Reporter(ProgressReporter):
    """A ProgressReporter whose thread runs for the `with` block."""

    def __enter__(self) -> Reporter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running_job(r: Redis, store: WorkerJobStore) -> str:
    """A job created as the API creates it, started by the store's worker."""
    job_id = uuid.uuid4().hex
    call = TRANSITIONS.create(job_id, PARAMS)
    r.register_script(jobstore.CREATE)(keys=call.keys, args=call.args)
    assert store.start(job_id) is Outcome.running
    return job_id


def cancel(r: Redis, job_id: str) -> Outcome:
    call = TRANSITIONS.cancel(job_id)
    return jobstore.decode_outcome(
        r.register_script(jobstore.CANCEL)(keys=call.keys, args=call.args)
    )


def stream(r: Redis, job_id: str) -> list[Event]:
    entries: list[tuple[str, dict[str, str]]] = r.xrange(keys.events(job_id))  # type: ignore[assignment]
    return [jobstore.decode_event(fields) for _, fields in entries]


def progress_steps(r: Redis, job_id: str) -> list[int]:
    return [int(str(data["step"])) for kind, data in stream(r, job_id) if kind == "progress"]


def recorded_step(r: Redis, job_id: str) -> int | None:
    step = r.hget(keys.job(job_id), "step")
    return None if step is None else int(str(step))


def written(r: Redis, job_id: str, step: int) -> None:
    """Wait for the reporter's thread to write the step."""
    poll(lambda: recorded_step(r, job_id) == step, f"step {step} of job {job_id} written")


def step_through(progress: ProgressReporter, job_id: str, steps: range, total: int) -> None:
    """The job's steps noted one by one, as the pipeline's step callback notes them."""
    for step in steps:
        progress.step(job_id, step, total)


def test_steps_coalesce_into_one_write_per_flush(r: Redis, store: WorkerJobStore) -> None:
    job_id = running_job(r, store)
    with reporter(store, NEVER_S) as progress:
        progress.track([job_id])
        step_through(progress, job_id, range(1, 51), 100)
        progress.flush()
        step_through(progress, job_id, range(51, 101), 100)
        progress.flush()
        progress.flush()  # nothing pending: a read of the flag, no write
        assert progress_steps(r, job_id) == [50, 100]


def test_untrack_writes_the_pending_step_before_it_returns(r: Redis, store: WorkerJobStore) -> None:
    job_id = running_job(r, store)
    with reporter(store, NEVER_S) as progress:
        progress.track([job_id])
        # Short of the last step, which the thread writes at once.
        step_through(progress, job_id, range(1, 28), 28)
        assert progress.untrack(job_id) is Steer.go
        assert recorded_step(r, job_id) == 27
        progress.step(job_id, 28, 28)  # a job no longer tracked: ignored
        progress.flush()
    store.finish(job_id, JobStatus.succeeded, timings=Timings())
    events = stream(r, job_id)
    assert events[-2:] == [
        ("progress", {"step": 27, "total": 28}),
        ("status", {"status": "succeeded"}),
    ]


def test_the_last_step_is_written_at_once_and_once(r: Redis, store: WorkerJobStore) -> None:
    job_id = running_job(r, store)
    with reporter(store, NEVER_S) as progress:
        progress.track([job_id])
        step_through(progress, job_id, range(1, 29), 28)
        written(r, job_id, 28)  # by the thread, long before its interval
        assert progress.untrack(job_id) is Steer.go
    store.finish(job_id, JobStatus.succeeded, timings=Timings())
    assert progress_steps(r, job_id) == [28]
    assert stream(r, job_id)[-1] == ("status", {"status": "succeeded"})


def test_a_cancel_before_the_last_steps_write_still_counts(r: Redis, store: WorkerJobStore) -> None:
    job_id = running_job(r, store)
    with reporter(store, NEVER_S) as progress:
        progress.track([job_id])
        assert cancel(r, job_id) is Outcome.cancel_requested
        progress.step(job_id, 8, 8)
        # Whoever writes the last step, the thread or untrack, its answer is the job's.
        assert progress.untrack(job_id) is Steer.cancel


def test_the_thread_writes_each_step_in_order(r: Redis, store: WorkerJobStore) -> None:
    job_id = running_job(r, store)
    with reporter(store, QUICK_S) as progress:
        progress.track([job_id])
        for step in range(1, 6):
            progress.step(job_id, step, 5)
            written(r, job_id, step)
        progress.untrack(job_id)
    store.finish(job_id, JobStatus.succeeded, timings=Timings())
    assert progress_steps(r, job_id) == [1, 2, 3, 4, 5]
    assert stream(r, job_id)[-1] == ("status", {"status": "succeeded"})


def test_a_cancel_reaches_the_flag_without_another_step(r: Redis, store: WorkerJobStore) -> None:
    job_id = running_job(r, store)
    with reporter(store, QUICK_S) as progress:
        progress.track([job_id])
        progress.step(job_id, 1, 8)
        written(r, job_id, 1)
        assert progress.steer(job_id) is Steer.go
        # From here the job is in a long step: nothing pending, the flag kept by reads alone.
        assert cancel(r, job_id) is Outcome.cancel_requested
        poll(lambda: progress.steer(job_id) is Steer.cancel, "the cancel on the flag")
        assert progress.untrack(job_id) is Steer.cancel


def test_a_cancel_in_a_batch_flips_that_job_alone(r: Redis, store: WorkerJobStore) -> None:
    batch = [running_job(r, store) for _ in range(3)]
    with reporter(store, QUICK_S) as progress:
        progress.track(batch)
        for job_id in batch:
            progress.step(job_id, 1, 8)
        assert cancel(r, batch[1]) is Outcome.cancel_requested
        poll(lambda: progress.steer(batch[1]) is Steer.cancel, "the cancel on its flag")
        assert [progress.steer(j) for j in batch] == [Steer.go, Steer.cancel, Steer.go]
        for job_id in batch:
            progress.untrack(job_id)
    assert [progress_steps(r, j)[-1] for j in batch] == [1, 1, 1]


@pytest.mark.parametrize("taken_by", ["the API", "another worker"])
def test_a_job_no_longer_ours_is_left(
    r: Redis, store: WorkerJobStore, redis_url: str, taken_by: str
) -> None:
    job_id = running_job(r, store)
    with reporter(store, QUICK_S) as progress:
        progress.track([job_id])
        progress.step(job_id, 1, 8)
        written(r, job_id, 1)
        if taken_by == "the API":
            call = TRANSITIONS.finish(job_id, JobStatus.failed, error="failed by the API")
            r.register_script(jobstore.FINISH)(keys=call.keys, args=call.args)
        else:  # this worker passed for gone (it never beat), and another started the job again
            with worker_store(redis_url).redis as client:
                other = WorkerJobStore(client, TTL_S, worker=new_worker_id("other"))
                assert other.start(job_id) is Outcome.running
        before = stream(r, job_id)
        poll(lambda: progress.steer(job_id) is Steer.leave, "leave on the flag")
        progress.step(job_id, 2, 8)
        assert progress.untrack(job_id) is Steer.leave
    assert stream(r, job_id) == before  # a job left gets no write


def test_an_outage_blocks_no_step_and_writes_resume_after_it(tmp_path: Path) -> None:
    port = free_port()
    first, second = Stack(), Stack()  # the redis-server before the outage, and after it
    url = dev.start_redis(first, tmp_path, dict(os.environ), port)
    store, outage = worker_store(url), Outage()
    try:
        with Redis.from_url(url, decode_responses=True) as r:
            job_id = running_job(r, store)
            with reporter(store, QUICK_S, outage) as progress:
                progress.track([job_id])
                progress.step(job_id, 1, 50)
                written(r, job_id, 1)
                first.stop()
                for step in range(2, 51):
                    progress.step(job_id, step, 50)
                    assert progress.steer(job_id) is Steer.go
                poll(lambda: outage.down, "the outage noticed")
                dev.start_redis(second, tmp_path, dict(os.environ), port)  # its data from disk
                written(r, job_id, 50)
                poll(lambda: not outage.down, "the outage over")
                assert progress.untrack(job_id) is Steer.go
            steps = progress_steps(r, job_id)
            assert steps[0] == 1 and steps[-1] == 50 and steps == sorted(steps)
    finally:
        store.redis.close()
        second.stop()
        first.stop()
