"""Every job-state transition, run by the real stores against a real redis-server.

The worker's sync store and the API's async store share one Redis, as in production; every test
works on fresh job ids, so tests never see each other's records. The races are run both ways
deterministically, then hammered from threads released together by a barrier: whichever order
Redis picks, the record and its event stream must tell one consistent story.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from common import jobstore, keys
from common.contract import JobStatus, Progress, Timings
from common.jobstore import EVENTS_MAXLEN, JobRecord, Outcome, Transitions, decode_record
from service.store import ApiJobStore, EventEntry
from tests.helpers import job_params
from worker.store import WorkerJobStore

T = TypeVar("T")

# Different retention times, so a test can tell which store's transition last set the TTL.
API_TTL_S = 3600
WORKER_TTL_S = 600
RACES = 40  # jobs per hammered race

PARAMS = job_params(
    "sd3-scenes",
    prompt="a small red circle in the center on a white background",
    steps=4,
    guidance_scale=2.0,
    seed=7,
    num_images=2,
)
TIMINGS = Timings(inference=1.5, encode=0.25)
CANCELED_QUEUED = "canceled by the client before it started"
WORKER_ERROR = "RuntimeError: out of memory"
API_ERROR = "the worker running this job stopped before it finished, and no retry was left"
FINAL = [s for s in JobStatus if s.terminal]

Event = tuple[str, dict[str, object]]


@pytest.fixture(scope="module")
def worker(r: Redis) -> WorkerJobStore:
    return WorkerJobStore(r, WORKER_TTL_S)


@pytest.fixture(scope="module")
def other_worker(redis_url: str) -> Iterator[WorkerJobStore]:
    """A second worker process's store: its own connections."""
    with Redis.from_url(redis_url, decode_responses=True) as client:
        yield WorkerJobStore(client, WORKER_TTL_S)


class Api:
    """ApiJobStore driven from sync tests and threads.

    Each call gets its own event loop and client: redis.asyncio connections belong to the loop
    that opened them.
    """

    def __init__(self, url: str) -> None:
        self.url = url

    def run(
        self,
        call: Callable[[ApiJobStore], Awaitable[T]],
        barrier: threading.Barrier | None = None,
    ) -> T:
        async def go() -> T:
            client = AsyncRedis.from_url(self.url, decode_responses=True)
            try:
                store = ApiJobStore(client, API_TTL_S)
                await client.ping()  # connected before the race starts, not during it
                if barrier is not None:
                    barrier.wait()
                return await call(store)
            finally:
                await client.aclose()

        return asyncio.run(go())

    def create(self) -> str:
        job_id = uuid.uuid4().hex
        self.run(lambda s: s.create(job_id, PARAMS))
        return job_id

    def cancel(self, job_id: str) -> Outcome:
        return self.run(lambda s: s.cancel(job_id))

    def fail(self, job_id: str, error: str) -> Outcome:
        return self.run(lambda s: s.fail(job_id, error))

    def get(self, job_id: str) -> JobRecord | None:
        return self.run(lambda s: s.get(job_id))

    def events(self, job_id: str, after: str = "0", block_ms: int = 1) -> list[EventEntry]:
        return self.run(lambda s: s.events(job_id, after, block_ms))


@pytest.fixture(scope="module")
def api(redis_url: str) -> Api:
    return Api(redis_url)


def record(worker: WorkerJobStore, job_id: str) -> JobRecord:
    found = worker.get(job_id)
    if found is None:
        pytest.fail(f"job {job_id} has no record")
    return found


def stream(r: Redis, job_id: str) -> list[Event]:
    entries: list[tuple[str, dict[str, str]]] = r.xrange(keys.events(job_id))  # type: ignore[assignment]
    return [jobstore.decode_event(fields) for _, fields in entries]


def status(value: str, error: str | None = None) -> Event:
    payload: dict[str, object] = {"status": value}
    if error is not None:
        payload["error"] = error
    return ("status", payload)


def snapshot(r: Redis, job_id: str) -> tuple[dict[str, str], list[Event]]:
    fields: dict[str, str] = r.hgetall(keys.job(job_id))  # type: ignore[assignment]
    return fields, stream(r, job_id)


def assert_ttl(r: Redis, job_id: str, ttl_s: int) -> None:
    for key in keys.script_keys(job_id):
        left = int(r.ttl(key))
        assert ttl_s - 2 <= left <= ttl_s, (key, left)


def assert_gone(r: Redis, job_id: str) -> None:
    assert r.exists(*keys.script_keys(job_id)) == 0


def job_in(state: JobStatus, api: Api, worker: WorkerJobStore) -> str:
    """A fresh job brought to `state` the way the service does it."""
    job_id = api.create()
    if state is JobStatus.queued:
        return job_id
    if state is JobStatus.canceled:
        assert api.cancel(job_id) is Outcome.canceled
        return job_id
    assert worker.start(job_id) is Outcome.running
    if state is JobStatus.succeeded:
        assert worker.finish(job_id, state, timings=Timings(), image_count=2) is Outcome.succeeded
    elif state is JobStatus.failed:
        assert worker.finish(job_id, state, timings=Timings(), error=WORKER_ERROR) is Outcome.failed
    return job_id


# The one source of truth: JobStatus, Outcome and the Lua constants agree.


def test_every_job_state_is_an_outcome_equal_to_its_name() -> None:
    for state in JobStatus:
        outcome = Outcome(state.value)
        # Equal to the plain string, so callers comparing with "canceled" keep working.
        assert outcome == state.value and outcome.status is state
    assert Outcome.cancel_requested.status is JobStatus.running
    assert Outcome.missing.status is None


def test_lua_states_and_terminal_set_come_from_jobstatus(r: Redis) -> None:
    names = "{" + ", ".join(o.name.upper() for o in Outcome) + "}"
    constants = r.eval(jobstore._PRELUDE + f"return {names}", 0, EVENTS_MAXLEN)
    assert constants == [o.value for o in Outcome]
    is_terminal = jobstore._PRELUDE + "return is_terminal(ARGV[2]) and 1 or 0"
    for state in JobStatus:
        assert r.eval(is_terminal, 0, EVENTS_MAXLEN, state.value) == int(state.terminal)


def test_script_bodies_spell_no_state_name() -> None:
    scripts = (jobstore.CREATE, jobstore.START, jobstore.PROGRESS, jobstore.FINISH, jobstore.CANCEL)
    for script in scripts:
        body = script.removeprefix(jobstore._PRELUDE)
        assert body != script
        for state in JobStatus:
            assert not re.search(rf"['\"]{state.value}['\"]", body), (state, body)


def test_transitions_build_keys_and_args_for_both_stores() -> None:
    t = Transitions(ttl_s=90)
    job_id = uuid.uuid4().hex
    expected_keys = keys.script_keys(job_id)
    assert t.create(job_id, PARAMS) == (
        expected_keys,
        [
            EVENTS_MAXLEN,
            PARAMS.model_dump_json().encode(),
            90,
            b'{"retries":"0"}',
        ],  # none unless given
    )
    assert t.create(job_id, PARAMS, retries=2).args[-1] == b'{"retries":"2"}'
    assert t.start(job_id) == (expected_keys, [EVENTS_MAXLEN])
    assert t.progress(job_id, 3, 8) == (expected_keys, [EVENTS_MAXLEN, 3, 8])
    assert t.cancel(job_id) == (expected_keys, [EVENTS_MAXLEN, 90])
    call = t.finish(job_id, JobStatus.failed, image_count=0, error="boom")
    assert call.keys == expected_keys
    assert call.args == [EVENTS_MAXLEN, "failed", '{"image_count": "0", "error": "boom"}', 90]
    for state in (JobStatus.queued, JobStatus.running):
        with pytest.raises(ValueError, match="final state"):
            t.finish(job_id, state)
    with pytest.raises(ValueError, match="ttl_s"):
        Transitions(ttl_s=0)


def test_decode_outcome_accepts_str_and_bytes_and_rejects_the_unknown() -> None:
    assert jobstore.decode_outcome("cancel_requested") is Outcome.cancel_requested
    assert jobstore.decode_outcome(b"missing") is Outcome.missing
    with pytest.raises(ValueError):
        jobstore.decode_outcome("exploded")


# create


def test_create_queues_the_job(r: Redis, api: Api, worker: WorkerJobStore) -> None:
    job_id = api.create()
    now = float(r.time()[0])
    job = record(worker, job_id)
    assert job.id == job_id and job.status is JobStatus.queued and job.params == PARAMS
    assert abs(job.created_at - now) < 5  # Redis' clock
    assert (job.started_at, job.finished_at, job.progress, job.error) == (None, None, None, None)
    assert (job.attempts, job.image_count, job.cancel_requested) == (0, 0, False)
    assert job.timings == Timings()
    assert api.get(job_id) == job
    assert stream(r, job_id) == [status("queued")]
    assert_ttl(r, job_id, API_TTL_S)


# start


def test_start_runs_a_queued_job(r: Redis, api: Api, worker: WorkerJobStore) -> None:
    job_id = api.create()
    outcome = worker.start(job_id)
    assert outcome is Outcome.running
    job = record(worker, job_id)
    assert job.status is JobStatus.running and job.attempts == 1
    assert job.started_at is not None and job.started_at >= job.created_at
    assert job.timings.queue_wait == round(job.started_at - job.created_at, 6)
    assert job.finished_at is None
    assert stream(r, job_id) == [status("queued"), status("running")]
    assert_ttl(r, job_id, API_TTL_S)  # only a final state shortens the record's life


def test_start_of_a_running_job_is_a_retry(
    r: Redis, api: Api, worker: WorkerJobStore, other_worker: WorkerJobStore
) -> None:
    job_id = job_in(JobStatus.running, api, worker)
    first = record(worker, job_id).started_at
    # The next worker, after the first died (it never beat, so it counts as gone).
    assert other_worker.start(job_id) is Outcome.running
    job = record(worker, job_id)
    assert job.status is JobStatus.running and job.attempts == 2
    assert first is not None and job.started_at is not None and job.started_at >= first
    assert r.hget(keys.job(job_id), "worker") == other_worker.worker
    assert stream(r, job_id) == [status("queued"), status("running"), status("running")]


def test_start_again_by_its_holder_changes_nothing(
    r: Redis, api: Api, worker: WorkerJobStore
) -> None:
    """The same worker's START resent (its reply lost): the run goes on as it began."""
    job_id = api.create()
    first = worker.begin(job_id, lookahead=2)
    before = snapshot(r, job_id)
    again = worker.begin(job_id, lookahead=2)
    assert again == first and again.outcome is Outcome.running and again.params == PARAMS
    assert snapshot(r, job_id) == before
    assert record(worker, job_id).attempts == 1


@pytest.mark.parametrize("state", FINAL)
def test_start_of_a_final_job_changes_nothing(
    state: JobStatus, r: Redis, api: Api, worker: WorkerJobStore
) -> None:
    job_id = job_in(state, api, worker)
    before = snapshot(r, job_id)
    outcome = worker.start(job_id)
    assert outcome is Outcome(state.value)
    assert snapshot(r, job_id) == before


def test_start_of_a_missing_job_creates_nothing(r: Redis, worker: WorkerJobStore) -> None:
    job_id = uuid.uuid4().hex
    assert worker.start(job_id) is Outcome.missing
    assert_gone(r, job_id)


# progress


def test_progress_records_steps_and_reports_a_cancel_request(
    r: Redis, api: Api, worker: WorkerJobStore
) -> None:
    job_id = job_in(JobStatus.running, api, worker)
    assert worker.progress(job_id, 1, 4) is False
    assert record(worker, job_id).progress == Progress(step=1, total=4)
    assert api.cancel(job_id) is Outcome.cancel_requested
    assert worker.progress(job_id, 2, 4) is True
    job = record(worker, job_id)
    assert job.progress == Progress(step=2, total=4) and job.status is JobStatus.running
    assert stream(r, job_id) == [
        status("queued"),
        status("running"),
        ("progress", {"step": 1, "total": 4}),
        ("progress", {"step": 2, "total": 4}),  # the cancel request itself is no event
    ]


@pytest.mark.parametrize("state", [s for s in JobStatus if s.terminal])
def test_progress_of_a_job_no_longer_running_stops_the_worker(
    state: JobStatus, r: Redis, api: Api, worker: WorkerJobStore
) -> None:
    job_id = job_in(state, api, worker)
    before = snapshot(r, job_id)
    assert worker.progress(job_id, 1, 4) is True
    assert snapshot(r, job_id) == before


def test_progress_of_a_missing_job_stops_the_worker_and_writes_nothing(
    r: Redis, worker: WorkerJobStore
) -> None:
    job_id = uuid.uuid4().hex
    assert worker.progress(job_id, 1, 4) is True
    assert_gone(r, job_id)


# finish


@pytest.mark.parametrize(
    ("state", "image_count", "error"),
    [
        (JobStatus.succeeded, 2, None),
        (JobStatus.failed, None, WORKER_ERROR),
        (JobStatus.canceled, None, "canceled by the client while running"),
    ],
)
def test_finish_records_the_outcome(
    state: JobStatus,
    image_count: int | None,
    error: str | None,
    r: Redis,
    api: Api,
    worker: WorkerJobStore,
) -> None:
    job_id = job_in(JobStatus.running, api, worker)
    worker.progress(job_id, 4, 4)
    outcome = worker.finish(job_id, state, timings=TIMINGS, image_count=image_count, error=error)
    assert outcome is Outcome(state.value)
    job = record(worker, job_id)
    assert job.status is state and job.error == error and job.image_count == (image_count or 0)
    assert job.started_at is not None and job.finished_at is not None
    assert job.finished_at >= job.started_at
    assert (job.timings.inference, job.timings.encode) == (1.5, 0.25)
    assert job.timings.queue_wait == round(job.started_at - job.created_at, 6)
    assert job.timings.total == round(job.finished_at - job.created_at, 6)
    assert job.progress == Progress(step=4, total=4)
    assert stream(r, job_id) == [
        status("queued"),
        status("running"),
        ("progress", {"step": 4, "total": 4}),
        status(state.value, error),
    ]
    assert_ttl(r, job_id, WORKER_TTL_S)


def test_api_fails_a_job_it_could_not_queue(r: Redis, api: Api, worker: WorkerJobStore) -> None:
    job_id = api.create()
    assert api.fail(job_id, "the job could not be queued") is Outcome.failed
    job = record(worker, job_id)
    assert job.status is JobStatus.failed and job.error == "the job could not be queued"
    assert job.started_at is None and job.finished_at is not None
    assert stream(r, job_id) == [status("queued"), status("failed", "the job could not be queued")]
    assert_ttl(r, job_id, API_TTL_S)


@pytest.mark.parametrize("state", FINAL)
def test_a_second_finish_changes_nothing(
    state: JobStatus, r: Redis, api: Api, worker: WorkerJobStore
) -> None:
    job_id = job_in(state, api, worker)
    before = snapshot(r, job_id)
    ttl_before = int(r.ttl(keys.job(job_id)))
    # Each second finish would also reset the TTL to its own store's, were it applied.
    again = worker.finish(job_id, JobStatus.succeeded, timings=TIMINGS, image_count=4)
    assert again is Outcome(state.value)
    assert api.fail(job_id, API_ERROR) is Outcome(state.value)
    assert snapshot(r, job_id) == before
    assert_ttl(r, job_id, ttl_before)
    terminal = [
        e for e in before[1] if e[0] == "status" and JobStatus(str(e[1]["status"])).terminal
    ]
    assert len(terminal) == 1


def test_finish_of_a_missing_job_creates_nothing(
    r: Redis, api: Api, worker: WorkerJobStore
) -> None:
    job_id = uuid.uuid4().hex
    assert worker.finish(job_id, JobStatus.succeeded, timings=TIMINGS) is Outcome.missing
    assert api.fail(job_id, API_ERROR) is Outcome.missing
    assert_gone(r, job_id)


# cancel


def test_cancel_of_a_queued_job_is_immediate(r: Redis, api: Api, worker: WorkerJobStore) -> None:
    job_id = api.create()
    assert api.cancel(job_id) is Outcome.canceled
    job = record(worker, job_id)
    assert job.status is JobStatus.canceled and job.error == CANCELED_QUEUED
    assert job.started_at is None and job.finished_at is not None and job.attempts == 0
    assert job.timings.total == round(job.finished_at - job.created_at, 6)
    assert stream(r, job_id) == [status("queued"), status("canceled", CANCELED_QUEUED)]
    assert_ttl(r, job_id, API_TTL_S)


def test_cancel_of_a_running_job_flags_it(r: Redis, api: Api, worker: WorkerJobStore) -> None:
    job_id = job_in(JobStatus.running, api, worker)
    assert api.cancel(job_id) is Outcome.cancel_requested
    job = record(worker, job_id)
    assert job.status is JobStatus.running and job.cancel_requested and job.finished_at is None
    assert api.cancel(job_id) is Outcome.cancel_requested  # asking twice is harmless
    assert stream(r, job_id) == [status("queued"), status("running")]
    assert_ttl(r, job_id, API_TTL_S)


@pytest.mark.parametrize("state", FINAL)
def test_cancel_of_a_final_job_changes_nothing(
    state: JobStatus, r: Redis, api: Api, worker: WorkerJobStore
) -> None:
    job_id = job_in(state, api, worker)
    before = snapshot(r, job_id)
    outcome = api.cancel(job_id)
    assert outcome is Outcome(state.value)
    assert snapshot(r, job_id) == before


def test_cancel_of_a_missing_job_creates_nothing(r: Redis, api: Api) -> None:
    job_id = uuid.uuid4().hex
    assert api.cancel(job_id) is Outcome.missing
    assert_gone(r, job_id)


# The races, each order made deterministic.


def test_cancel_before_start_keeps_the_worker_off(
    r: Redis, api: Api, worker: WorkerJobStore
) -> None:
    job_id = api.create()
    assert api.cancel(job_id) is Outcome.canceled
    assert worker.start(job_id) is Outcome.canceled
    job = record(worker, job_id)
    assert job.status is JobStatus.canceled and job.attempts == 0 and job.started_at is None
    assert stream(r, job_id) == [status("queued"), status("canceled", CANCELED_QUEUED)]


def test_cancel_after_start_reaches_the_next_step(
    r: Redis, api: Api, worker: WorkerJobStore
) -> None:
    job_id = api.create()
    assert worker.start(job_id) is Outcome.running
    assert api.cancel(job_id) is Outcome.cancel_requested
    assert worker.progress(job_id, 1, 4) is True
    error = "canceled by the client while running"
    assert worker.finish(job_id, JobStatus.canceled, timings=TIMINGS, error=error) == "canceled"
    assert record(worker, job_id).status is JobStatus.canceled
    assert [e for e in stream(r, job_id) if e[0] == "status"] == [
        status("queued"),
        status("running"),
        status("canceled", error),
    ]


def test_finish_after_a_cancel_request_still_succeeds(
    r: Redis, api: Api, worker: WorkerJobStore
) -> None:
    job_id = job_in(JobStatus.running, api, worker)
    assert api.cancel(job_id) is Outcome.cancel_requested
    # The worker finished before it saw the flag: the images exist, so the job succeeded.
    assert worker.finish(job_id, JobStatus.succeeded, timings=TIMINGS, image_count=2) == "succeeded"
    job = record(worker, job_id)
    assert job.status is JobStatus.succeeded and job.image_count == 2 and job.cancel_requested
    assert stream(r, job_id)[-1] == status("succeeded")


def test_finish_after_cancel_of_a_queued_job_does_not_overwrite(
    r: Redis, api: Api, worker: WorkerJobStore
) -> None:
    job_id = api.create()
    assert api.cancel(job_id) is Outcome.canceled
    before = snapshot(r, job_id)
    outcome = worker.finish(job_id, JobStatus.succeeded, timings=TIMINGS, image_count=2)
    assert outcome is Outcome.canceled
    assert snapshot(r, job_id) == before
    assert record(worker, job_id).image_count == 0


# The races, hammered: threads released together, Redis picks the order.


def hammer(
    job_ids: list[str], *sides: Callable[[str, threading.Barrier], Outcome]
) -> list[tuple[str, list[Outcome]]]:
    """Run every side on every job at once; returns each job's outcomes, in `sides` order."""
    # A multiple of len(sides) threads, tasks queued side by side: each job's sides all start.
    with ThreadPoolExecutor(max_workers=8 * len(sides)) as pool:
        runs: list[tuple[str, list[Future[Outcome]]]] = []
        for job_id in job_ids:
            barrier = threading.Barrier(len(sides), timeout=10)
            runs.append((job_id, [pool.submit(side, job_id, barrier) for side in sides]))
        return [(job_id, [f.result() for f in futures]) for job_id, futures in runs]


def starting(worker: WorkerJobStore) -> Callable[[str, threading.Barrier], Outcome]:
    def side(job_id: str, barrier: threading.Barrier) -> Outcome:
        worker.redis.ping()  # a pooled connection ready before the race
        barrier.wait()
        return worker.start(job_id)

    return side


def finishing(
    worker: WorkerJobStore, state: JobStatus, **fields: Any
) -> Callable[[str, threading.Barrier], Outcome]:
    def side(job_id: str, barrier: threading.Barrier) -> Outcome:
        worker.redis.ping()
        barrier.wait()
        return worker.finish(job_id, state, timings=TIMINGS, **fields)

    return side


def canceling(api: Api) -> Callable[[str, threading.Barrier], Outcome]:
    def side(job_id: str, barrier: threading.Barrier) -> Outcome:
        return api.run(lambda s: s.cancel(job_id), barrier)

    return side


def failing(api: Api) -> Callable[[str, threading.Barrier], Outcome]:
    def side(job_id: str, barrier: threading.Barrier) -> Outcome:
        return api.run(lambda s: s.fail(job_id, API_ERROR), barrier)

    return side


def test_cancel_racing_start_leaves_one_story(r: Redis, api: Api, worker: WorkerJobStore) -> None:
    job_ids = [api.create() for _ in range(RACES)]
    for job_id, (started, canceled) in hammer(job_ids, starting(worker), canceling(api)):
        job = record(worker, job_id)
        events = stream(r, job_id)
        if canceled is Outcome.canceled:  # the cancel came first
            assert started is Outcome.canceled
            assert job.status is JobStatus.canceled and job.attempts == 0
            assert events == [status("queued"), status("canceled", CANCELED_QUEUED)]
        else:
            assert (started, canceled) == (Outcome.running, Outcome.cancel_requested)
            assert job.status is JobStatus.running and job.cancel_requested and job.attempts == 1
            assert events == [status("queued"), status("running")]


def test_cancel_racing_finish_never_undoes_it(r: Redis, api: Api, worker: WorkerJobStore) -> None:
    job_ids = [job_in(JobStatus.running, api, worker) for _ in range(RACES)]
    finish = finishing(worker, JobStatus.succeeded, image_count=2)
    for job_id, (finished, canceled) in hammer(job_ids, finish, canceling(api)):
        assert finished is Outcome.succeeded
        assert canceled in (Outcome.cancel_requested, Outcome.succeeded)
        job = record(worker, job_id)
        assert job.status is JobStatus.succeeded and job.image_count == 2 and job.error is None
        # The flag is set only when the cancel landed while the job was still running.
        assert job.cancel_requested is (canceled is Outcome.cancel_requested)
        assert stream(r, job_id) == [status("queued"), status("running"), status("succeeded")]


def test_racing_finishes_have_exactly_one_winner(
    r: Redis, api: Api, worker: WorkerJobStore, other_worker: WorkerJobStore
) -> None:
    job_ids = [job_in(JobStatus.running, api, worker) for _ in range(RACES)]
    sides = (
        finishing(worker, JobStatus.succeeded, image_count=2),
        finishing(other_worker, JobStatus.failed, error=WORKER_ERROR),
        failing(api),  # the API declaring the worker lost
    )
    # Each possible winner: (state, error, image_count) and the TTL its store sets.
    winners = {
        (JobStatus.succeeded, None, 2): WORKER_TTL_S,
        (JobStatus.failed, WORKER_ERROR, 0): WORKER_TTL_S,
        (JobStatus.failed, API_ERROR, 0): API_TTL_S,
    }
    for job_id, outcomes in hammer(job_ids, *sides):
        job = record(worker, job_id)
        won = (job.status, job.error, job.image_count)
        assert won in winners
        # The winner is told its own state and every loser the winner's: all agree.
        assert [o.status for o in outcomes] == [job.status] * len(sides)
        assert stream(r, job_id) == [
            status("queued"),
            status("running"),
            status(job.status.value, job.error),
        ]
        assert_ttl(r, job_id, winners[won])


# Reading back


def test_api_events_read_after_a_cursor(api: Api, worker: WorkerJobStore) -> None:
    job_id = job_in(JobStatus.running, api, worker)
    worker.progress(job_id, 1, 2)
    entries = api.events(job_id)
    assert [(kind, payload) for _, kind, payload in entries] == [
        status("queued"),
        status("running"),
        ("progress", {"step": 1, "total": 2}),
    ]
    assert [e[1:] for e in api.events(job_id, after=entries[1][0])] == [
        ("progress", {"step": 1, "total": 2})
    ]
    assert api.events(job_id, after=entries[-1][0], block_ms=20) == []

    async def wait_for_next(store: ApiJobStore) -> list[EventEntry]:
        reader = asyncio.create_task(store.events(job_id, entries[-1][0], block_ms=2000))
        await asyncio.to_thread(worker.progress, job_id, 2, 2)
        return await reader

    woken = api.run(wait_for_next)
    assert [e[1:] for e in woken] == [("progress", {"step": 2, "total": 2})]


def test_decode_record_times_phases_on_redis_clock() -> None:
    fields = {
        "status": "succeeded",
        "params": PARAMS.model_dump_json(),
        "created_at": "1700000000.000000",
        "started_at": "1700000000.250000",
        "finished_at": "1700000003.125000",
        "timings": Timings(inference=2.5, encode=0.125).model_dump_json(),
        "step": "4",
        "total": "4",
        "image_count": "2",
        "cancel_requested": "1",
        "attempts": "2",
    }
    job = decode_record("j", fields)
    assert job.timings == Timings(queue_wait=0.25, inference=2.5, encode=0.125, total=3.125)
    assert job.progress == Progress(step=4, total=4)
    assert (job.image_count, job.cancel_requested, job.attempts) == (2, True, 2)
    queued = decode_record("j", {k: fields[k] for k in ("status", "params", "created_at")})
    assert queued.timings == Timings() and queued.progress is None and not queued.cancel_requested


def test_records_carry_redis_clock_fields(r: Redis, api: Api, worker: WorkerJobStore) -> None:
    job_id = job_in(JobStatus.succeeded, api, worker)
    raw, _ = snapshot(r, job_id)
    for name in ("created_at", "started_at", "finished_at"):
        assert re.fullmatch(r"\d+\.\d{6}", raw[name]), raw[name]  # TIME's seconds.microseconds
    job = record(worker, job_id)
    created, started, finished = (
        float(raw[n]) for n in ("created_at", "started_at", "finished_at")
    )
    assert job.timings.queue_wait == round(started - created, 6)
    assert job.timings.total == round(finished - created, 6)
