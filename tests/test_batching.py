"""Cross-job batching: TAKE against a real Redis, and batches on the real tiny pipeline.

A batch is the job RQ handed a worker plus compatible jobs the worker took off the same queue
(TAKE). These tests check that each job of a batch stays its own: its seeds (each image within
1/255 of the job run alone), its progress, its cancellation, its final state and RQ's record of
it; and that a batch whose worker is gone goes back to the queue whole. The kill -9 of a worker
with a batch in flight is in tests/chaos.
"""

# The Redis fixtures of tests/test_recovery are imported by name, and named again as arguments.
# ruff: noqa: F811

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from redis import Redis
from redis.exceptions import NoScriptError

from common import keys, workers
from common.contract import GenerateParams, JobStatus
from common.jobstore import CANCELED_RUNNING, START, Outcome, Started, decode_start
from common.results import ResultStore, open_result_store
from tests.test_recovery import (  # noqa: F401  (fixtures, used by name)
    MODEL,
    PARAMS,
    RACES,
    SILENCE_S,
    Jobs,
    await_uptime,
    beat,
    fresh_model,
    jobs,
    reaper,
    record,
    rq,
    rq_runs,
    rq_status,
    silence,
    statuses,
    stream,
    waiting,
    worker_store,
)
from worker import metrics
from worker.batch import batch_key, pick
from worker.pipeline import WarmPipeline
from worker.runner import JobRunner
from worker.settings import WorkerSettings
from worker.store import WorkerJobStore

# One pixel value in 8 bits: how far an image of a batch may be from the same job run alone.
TOLERANCE = 1

BASE = PARAMS.model_copy(update={"width": 64, "height": 64, "steps": 3})


def job(prompt: str, seed: int, num_images: int = 1, **changes: object) -> GenerateParams:
    return BASE.model_copy(
        update={"prompt": prompt, "seed": seed, "num_images": num_images, **changes}
    )


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_close(got: Sequence[Image.Image], alone: Sequence[Image.Image]) -> None:
    assert len(got) == len(alone)
    for a, b in zip(got, alone, strict=True):
        assert np.abs(pixels(a) - pixels(b)).max() <= TOLERANCE


# Which jobs share a call: pure logic.


def test_jobs_share_a_call_only_when_everything_that_shapes_the_loop_agrees() -> None:
    first = job("a", 1)
    assert batch_key(job("b", 2, 2, negative_prompt="blur", output_format="jpeg")) == batch_key(
        first
    )
    for change in ({"width": 128}, {"height": 128}, {"steps": 4}, {"guidance_scale": 3.0}):
        assert batch_key(job("a", 1, **change)) != batch_key(first)
    assert batch_key(job("a", 1, model="other")) != batch_key(first)


def test_pick_fills_the_batch_in_queue_order_skipping_what_does_not_fit() -> None:
    waiting_jobs = [
        ("wide", job("x", 1, width=128)),
        ("gone", None),
        ("three", job("x", 1, 3)),  # 1 + 3 fits 4
        ("one", job("x", 1)),  # no room left
    ]
    assert pick(job("a", 1), waiting_jobs, max_images=4) == ["three"]
    assert pick(job("a", 1), waiting_jobs, max_images=3) == ["one"]
    assert pick(job("a", 1, 4), waiting_jobs, max_images=4) == []


# TAKE on a real Redis.


def test_start_answers_the_started_jobs_params_and_the_jobs_waiting_behind_it(
    r: Redis, jobs: Jobs
) -> None:
    store = worker_store(r)
    first = jobs.create()
    behind = [jobs.create() for _ in range(3)]
    assert jobs.take().id == first  # RQ's pop of the job it hands the worker
    started = store.begin(first, lookahead=2)
    assert started == (Outcome.running, PARAMS, tuple(behind[:2]))
    assert record(r, first).status is JobStatus.running
    # Only a job START starts comes with its parameters; a lookahead of 0 reads no queue.
    assert store.begin(first, lookahead=2) == (Outcome.running, PARAMS, tuple(behind[:2]))
    assert store.begin(uuid.uuid4().hex, lookahead=2) == (Outcome.missing, None, ())
    assert jobs.cancel(behind[0]) is Outcome.canceled
    assert store.begin(behind[0], lookahead=2) == (Outcome.canceled, None, ())
    assert store.begin(behind[1]) == (Outcome.running, PARAMS, ())


def popped_with(r: Redis, jobs: Jobs, behind: int) -> tuple[str, list[str]]:
    """A job RQ popped for a worker, with `behind` jobs queued after it; START's script loaded,
    as the worker's own STARTs load it."""
    job_id = jobs.create()
    waiting_ids = [jobs.create() for _ in range(behind)]
    assert jobs.take().id == job_id
    r.script_load(START)
    return job_id, waiting_ids


def start_in_rqs_transaction(rq: Redis, store: WorkerJobStore, job_id: str) -> Started:
    """START as WarmWorker.execute_job sends it: in a transaction of RQ's client."""
    with rq.pipeline() as pipe:
        pipe.echo("RQ's commands")
        store.begin_on(job_id, 2, pipe)
        _, started = pipe.execute()
    return decode_start(started)


def test_start_in_rqs_transaction_answers_as_start_alone_and_noscript_leaves_the_job_queued(
    r: Redis, rq: Redis, jobs: Jobs
) -> None:
    # WarmWorker.execute_job sends the runner's START in RQ's own transaction, on RQ's client.
    store = worker_store(r)
    first, behind = popped_with(r, jobs, behind=2)
    assert start_in_rqs_transaction(rq, store, first) == (Outcome.running, PARAMS, tuple(behind))
    assert record(r, first).status is JobStatus.running
    # A Redis that has lost the script (restarted, flushed) answers NOSCRIPT in START's place,
    # and runs the rest of the transaction; the job is left for the runner's own START.
    r.script_flush()
    with rq.pipeline() as pipe:
        pipe.echo("RQ's commands")
        store.begin_on(behind[0], 0, pipe)
        echoed, refused = pipe.execute(raise_on_error=False)
    assert echoed == b"RQ's commands"
    assert isinstance(refused, NoScriptError)
    assert record(r, behind[0]).status is JobStatus.queued
    assert store.begin(behind[0]) == (Outcome.running, PARAMS, ())


def test_start_in_rqs_transaction_sent_again_after_a_lost_reply_starts_the_job_once(
    r: Redis, rq: Redis, jobs: Jobs
) -> None:
    # redis-py sends a transaction again when its reply does not come in time; so does the
    # worker's own retry of START. The run the first began goes on, counted once.
    store = worker_store(r)
    job_id, behind = popped_with(r, jobs, behind=2)
    first = start_in_rqs_transaction(rq, store, job_id)
    assert first == (Outcome.running, PARAMS, tuple(behind))
    assert start_in_rqs_transaction(rq, store, job_id) == first
    assert store.begin(job_id, 2) == first
    assert record(r, job_id).attempts == 1
    assert statuses(r, job_id) == ["queued", "running"]


def test_a_start_given_back_unrun_is_queued_at_the_front_with_its_attempt_returned(
    r: Redis, rq: Redis, jobs: Jobs
) -> None:
    # The transaction carrying START failed past redis-py's retries, yet Redis applied it: the
    # worker, which never ran the job, gives it back once Redis answers again.
    store, other = worker_store(r), worker_store(r)
    job_id, behind = popped_with(r, jobs, behind=1)
    start_in_rqs_transaction(rq, store, job_id)
    # Another live worker giving back a job it does not hold changes nothing.
    reaper(r).give_back(job_id, other.worker)
    assert record(r, job_id).status is JobStatus.running
    reaper(r).give_back(job_id, store.worker)
    job = record(r, job_id)
    assert (job.status, job.attempts) == (JobStatus.queued, 0)
    assert r.hget(keys.job(job_id), "worker") is None
    assert waiting(r) == [job_id, *behind]
    assert rq_status(rq, job_id) == "queued"
    assert rq_runs(r, job_id) == ([], [])
    assert statuses(r, job_id) == ["queued", "running", "queued"]
    # Its next run is its first attempt.
    assert jobs.take().id == job_id
    assert other.begin(job_id).outcome is Outcome.running
    assert record(r, job_id).attempts == 1


def test_take_moves_a_queued_job_off_the_queue_and_starts_it_on_the_worker(
    r: Redis, rq: Redis, jobs: Jobs
) -> None:
    store = worker_store(r)
    first, second = jobs.create(), jobs.create()
    assert store.take([second]) == [Outcome.running]
    assert waiting(r) == [first]
    taken = record(r, second)
    assert (taken.status, taken.attempts) == (JobStatus.running, 1)
    assert r.hget(keys.job(second), "worker") == store.worker
    assert r.sismember(keys.running(MODEL), second)
    assert statuses(r, second) == ["queued", "running"]
    assert rq_status(rq, second) == "queued"  # RQ's record stays until the worker ends it
    # ... or, should the worker die after the job's end, until the job's own record expires.
    assert 0 < rq.ttl(keys.rq_job(second)) <= r.ttl(keys.job(second))
    assert rq.ttl(keys.rq_job(first)) == -1  # a job left queued keeps RQ's record as RQ made it


def test_take_leaves_a_job_that_is_no_longer_queued_where_it_is(r: Redis, jobs: Jobs) -> None:
    store = worker_store(r)
    canceled = jobs.create()
    assert jobs.cancel(canceled) is Outcome.canceled
    assert store.take([canceled, uuid.uuid4().hex]) == [Outcome.canceled, Outcome.missing]
    assert waiting(r) == [canceled]  # for RQ to pop and drop, as with any canceled job
    assert statuses(r, canceled) == ["queued", "canceled"]


def test_two_workers_taking_the_same_jobs_each_get_a_job_once(r: Redis, jobs: Jobs) -> None:
    ids = [jobs.create() for _ in range(RACES)]
    stores = [worker_store(r), worker_store(r)]
    barrier = threading.Barrier(len(stores))

    def take(store: WorkerJobStore) -> list[Outcome]:
        barrier.wait()
        return store.take(ids)

    with ThreadPoolExecutor(len(stores)) as pool:
        replies = list(pool.map(take, stores))
    for index, job_id in enumerate(ids):
        got = sorted(reply[index] for reply in replies)
        assert got == sorted([Outcome.running, Outcome.taken]), job_id
        winner = stores[[reply[index] for reply in replies].index(Outcome.running)]
        assert r.hget(keys.job(job_id), "worker") == winner.worker
        assert statuses(r, job_id) == ["queued", "running"]
    assert waiting(r) == []


def test_a_live_worker_keeps_every_job_of_its_batch(r: Redis, jobs: Jobs) -> None:
    store = worker_store(r)
    ids = [jobs.create() for _ in range(3)]
    assert store.take(ids) == [Outcome.running] * 3
    for job_id in ids:  # started long ago: only the heartbeat's list can keep them
        r.hset(keys.job(job_id), "started_at", "1.0")
    alive_keys, args = workers.alive_call(store.worker, MODEL, ids)
    r.register_script(workers.ALIVE)(keys=alive_keys, args=args)
    await_uptime(r, SILENCE_S)
    assert reaper(r).reap() == {}
    assert all(record(r, job_id).status is JobStatus.running for job_id in ids)


def test_a_batch_whose_worker_is_gone_goes_back_to_the_front_of_the_queue_whole(
    r: Redis, rq: Redis, jobs: Jobs
) -> None:
    store = worker_store(r)
    first = jobs.create()
    popped = jobs.take()  # RQ's run of the batch's first job
    assert popped.id == first and store.start(first) is Outcome.running
    others = [jobs.create() for _ in range(2)]
    later = jobs.create(params=job("incompatible", 1, width=128))
    assert store.take(others) == [Outcome.running] * 2
    silence(r, store.worker)
    await_uptime(r, SILENCE_S)
    back = reaper(r).reap()
    assert back == {job_id: Outcome.queued for job_id in [first, *others]}
    assert set(waiting(r)[:3]) == {first, *others} and waiting(r)[3] == later
    for job_id in [first, *others]:
        assert statuses(r, job_id) == ["queued", "running", "queued"]
        assert rq_status(rq, job_id) == "queued"


# Batches on the real tiny pipeline.


@pytest.fixture(scope="module")
def warm(model_dir: Path) -> WarmPipeline:
    return WarmPipeline(
        WorkerSettings(model=str(model_dir), torch_device="cpu", torch_dtype="float32")
    )


@pytest.fixture(scope="module")
def alone(warm: WarmPipeline) -> dict[str, list[Image.Image]]:
    """Each job of the batch tests, run by itself."""
    return {p.prompt: warm.generate(p) for p in BATCH}


BATCH = [
    job("a red circle", 11, 2),
    job("a blue square", 3, negative_prompt="blurry"),
    job("a green triangle", 5),
]


def test_each_image_of_a_batch_matches_its_job_run_alone(
    warm: WarmPipeline, alone: dict[str, list[Image.Image]]
) -> None:
    got = warm.generate_batch(BATCH)
    for params, images in zip(BATCH, got, strict=True):
        assert images is not None
        assert_close(images, alone[params.prompt])


def test_a_job_dropped_midway_is_not_decoded_and_the_others_are_unchanged(
    warm: WarmPipeline, alone: dict[str, list[Image.Image]]
) -> None:
    seen: list[int] = []

    def on_step(step: int, total: int) -> list[int]:
        seen.append(step)
        return [0] if step == 1 else []

    got = warm.generate_batch(BATCH, on_step)
    assert seen == [0, 1, 2, 3]
    assert got[0] is None
    for params, images in zip(BATCH[1:], got[1:], strict=True):
        assert images is not None
        assert_close(images, alone[params.prompt])


class CancelingStore(WorkerJobStore):
    """The real store; the client's cancel of one job lands right after the batch is taken."""

    def __init__(self, r: Redis, jobs: Jobs, victim: str, worker: str) -> None:
        super().__init__(r, 600, worker=worker)
        self.jobs = jobs
        self.victim = victim

    def take(self, job_ids: Sequence[str]) -> list[Outcome]:
        taken = super().take(job_ids)
        assert self.jobs.cancel(self.victim) is Outcome.cancel_requested
        return taken


def stored_image(results: ResultStore, job_id: str, index: int) -> Image.Image:
    found = results.get(job_id, index, BASE.output_format)
    assert found is not None, (job_id, index)
    return Image.open(io.BytesIO(found.data))


def runner(warm: WarmPipeline, store: WorkerJobStore, results: ResultStore) -> JobRunner:
    labels = metrics.JobLabels(MODEL, frozenset(), frozenset())
    return JobRunner(warm, store, results, labels, max_batch=4)


def test_a_job_canceled_in_a_batch_leaves_it_and_the_others_succeed(
    r: Redis,
    rq: Redis,
    jobs: Jobs,
    warm: WarmPipeline,
    alone: dict[str, list[Image.Image]],
    tmp_path: Path,
) -> None:
    ids = [jobs.create(params=p) for p in BATCH]
    incompatible = jobs.create(params=job("too big", 1, width=128))
    store = CancelingStore(r, jobs, ids[1], worker_store(r).worker)
    beat(r, store.worker)
    results = open_result_store(f"file://{tmp_path}")
    assert jobs.take().id == ids[0]
    assert runner(warm, store, results).run(ids[0]) == "succeeded"

    assert waiting(r) == [incompatible]  # not batched: another size
    canceled = record(r, ids[1])
    assert (canceled.status, canceled.error) == (JobStatus.canceled, CANCELED_RUNNING)
    assert results.get(ids[1], 0, BASE.output_format) is None
    for index in (0, 2):
        job_id, params = ids[index], BATCH[index]
        done = record(r, job_id)
        assert (done.status, done.image_count) == (JobStatus.succeeded, params.num_images)
        stored = [stored_image(results, job_id, k) for k in range(params.num_images)]
        assert_close(stored, alone[params.prompt])
        # Coalesced: not every step is written, but in order, and the last always.
        steps = [int(str(data["step"])) for kind, data in stream(r, job_id) if kind == "progress"]
        assert steps == sorted(set(steps)) and steps[-1] == 3
        assert statuses(r, job_id) == ["queued", "running", "succeeded"]
    assert rq_status(rq, ids[2]) == "finished"  # taken: RQ's record ended by the worker
    assert rq_status(rq, ids[1]) == "canceled"
