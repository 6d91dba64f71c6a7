"""Readiness follows the workers' warmth, and an accepted job outlives the worker running it."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from redis.connection import AbstractConnection
from rq import Queue, SimpleWorker, get_current_job
from rq.job import JobStatus

from common import jobstore, keys
from service.dev import Stack, free_port
from service.redis_monitor import Sent, commands_sent, evalsha
from tests.harness import (
    START_TIMEOUT_S,
    TINY_MODEL,
    Deployment,
    Worker,
    deployment,
    poll,
    settings_env,
    start_redis,
    start_worker,
    worker_count,
)
from tests.helpers import first_progress, submit, wait_final
from worker.main import WarmWorker

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Deployment]:
    """Redis and the API with no worker: each test starts the workers it needs."""
    fast_failover = settings_env(
        heartbeat_s=1,  # a killed worker's heartbeat lapses within 3 s
        worker_lost_after_s=3,  # and its job is taken back within 3 s of its last beat
    )
    with deployment(tmp_path_factory.mktemp("bare"), model_dir, fast_failover) as bare:
        yield bare


def first_answer(url: str) -> httpx.Response:
    """The first reply of a server that is still starting, polled finely so it is early."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            time.sleep(0.02)
    raise TimeoutError(f"{url} never answered")


def test_readiness_allows_scale_to_zero(bare: Deployment) -> None:
    api = bare.api
    # Ready as soon as Redis answers: Kubernetes keeps routing to the API with no GPU up.
    reply = api.client.get("/readyz")
    assert reply.status_code == 200
    assert reply.json() == {"ready": True, "redis": True, "workers": 0}
    # Before any worker has ever published a model there is nothing to queue for.
    refused = submit(api, prompt="too early")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "not_ready"
    assert refused.headers["retry-after"] == "5"
    assert api.client.get("/v1/models").json() == {"object": "list", "data": []}

    worker = start_worker(bare.stack, bare.env, "lifecycle-a")
    # The worker's own probes: up while it loads, ready only once warm.
    early = first_answer(f"{worker.metrics_url}/readyz")
    assert early.status_code == 503
    assert early.json() == {"warm": False, "redis": True}
    assert httpx.get(f"{worker.metrics_url}/healthz").status_code == 200
    poll(lambda: httpx.get(f"{worker.metrics_url}/readyz").status_code == 200, "a warm worker")
    assert httpx.get(f"{worker.metrics_url}/readyz").json() == {"warm": True, "redis": True}
    poll(lambda: worker_count(api) == 1, "the API to see the warm worker")
    assert submit(api, prefer="wait=60", prompt="now", steps=1).status_code == 200

    worker.process.terminate()  # a clean stop retires the heartbeat at once
    assert worker.process.wait(timeout=60) == 0
    assert worker_count(api) == 0
    assert api.client.get("/readyz").status_code == 200

    # The pool scaled to zero: the model stays known, and its jobs queue for the next worker.
    queued = submit(api, prompt="for the next worker", steps=1)
    assert queued.status_code == 202
    assert queued.json()["status"] == "queued" and queued.json()["model"] == TINY_MODEL
    card = api.client.get(f"/v1/models/{TINY_MODEL}").json()
    assert (card["workers_ready"], card["queue_depth"]) == (0, 1)
    metrics = api.client.get("/metrics").text
    assert f'sd3serve_ready_workers{{model="{TINY_MODEL}"}} 0.0' in metrics
    assert f'sd3serve_queue_depth{{model="{TINY_MODEL}"}} 1.0' in metrics

    again = start_worker(bare.stack, bare.env, "lifecycle-a2")
    assert wait_final(api, queued.json()["id"])["status"] == "succeeded"
    again.process.terminate()
    assert again.process.wait(timeout=60) == 0


def test_accepted_job_survives_its_worker_dying(bare: Deployment) -> None:
    api = bare.api
    first = start_worker(bare.stack, bare.env, "lifecycle-b")
    poll(lambda: worker_count(api) == 1, "the first worker")
    job = submit(api, prompt="outlives its worker", width=384, height=384, steps=30).json()
    first_progress(api, job["id"])
    first.process.kill()  # no clean-up at all, as in a crash or an OOM kill
    first.process.wait(timeout=30)
    poll(lambda: worker_count(api) == 0, "the dead worker's heartbeat to lapse")
    assert api.client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"

    second = start_worker(bare.stack, bare.env, "lifecycle-c")  # finds the job abandoned
    done = wait_final(api, job["id"], timeout_s=180)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    assert len(done["links"]["images"]) == 1
    second.process.terminate()
    assert second.process.wait(timeout=60) == 0


def model_loaded(worker: Worker) -> bool:
    if worker.process.poll() is not None:
        raise AssertionError(f"the worker exited with code {worker.process.returncode}")
    scrape = httpx.get(f"{worker.metrics_url}/metrics", timeout=5).text
    return any(
        line.startswith("sd3serve_model_load_seconds ") and float(line.split()[1]) > 0
        for line in scrape.splitlines()
    )


def test_a_worker_up_before_its_redis_waits_for_it_with_the_model_loaded(
    bare: Deployment, tmp_path: Path
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    early = start_worker(bare.stack, bare.env | settings_env(redis_url=url), "lifecycle-early")
    poll(lambda: model_loaded(early), "the model to load with Redis down")
    assert httpx.get(f"{early.metrics_url}/readyz", timeout=5).json() == {
        "warm": False,
        "redis": False,
    }
    assert model_loaded(early)  # still waiting, not exited

    # A stack of its own: the shared one holds workers earlier tests stopped, which its
    # readiness wait would take for a crash.
    late_stack = Stack()
    try:
        assert start_redis(late_stack, tmp_path, port) == url
        poll(
            lambda: httpx.get(f"{early.metrics_url}/readyz", timeout=5).status_code == 200,
            "the worker to be ready once Redis is up",
        )
        with Redis.from_url(url, decode_responses=True) as late:
            assert late.hexists(keys.MODELS, TINY_MODEL)  # its model published on the new Redis
        early.process.terminate()
        assert early.process.wait(timeout=60) == 0
    finally:
        late_stack.stop()


@pytest.fixture
def idle_worker(bare: Deployment, request: pytest.FixtureRequest) -> Iterator[WarmWorker]:
    """A worker on an empty queue, in this process; the signal handlers it installs are undone."""
    connection = Redis.from_url(bare.redis_url)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    name = request.node.name  # RQ refuses a second live worker of the same name
    try:
        yield WarmWorker([Queue(name, connection=connection)], connection=connection, name=name)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        connection.close()


def test_a_stop_that_lands_in_a_finalizer_is_not_lost(idle_worker: WarmWorker) -> None:
    # A signal handler runs wherever the main thread is, a finalizer included, and Python drops
    # an exception raised there: RQ's own idle stop (raising StopRequested) would vanish.
    class StopsWhenCollected:
        def __del__(self) -> None:
            idle_worker.request_stop(signal.SIGTERM, None)  # type: ignore[no-untyped-call]

    StopsWhenCollected()
    assert idle_worker.dequeue_job_and_maintain_ttl(timeout=60) is None


def test_a_stop_ends_an_idle_wait(idle_worker: WarmWorker, bare: Deployment) -> None:
    def stop_once_blocked(monitor: Redis) -> None:
        # CLIENT LIST flags a blocked client with "b"; RQ waits with BLPOP or BLMOVE.
        poll(
            lambda: any(
                "b" in c["flags"] and c["cmd"] in ("blpop", "blmove") for c in monitor.client_list()
            ),
            "the worker to block on its queue",
        )
        idle_worker._shutdown()

    with Redis.from_url(bare.redis_url) as monitor:
        stopper = threading.Thread(target=stop_once_blocked, args=(monitor,))
        stopper.start()
        assert idle_worker.dequeue_job_and_maintain_ttl(timeout=60) is None
        stopper.join()


def test_a_stop_between_a_command_and_its_reply_still_registers_the_death(
    idle_worker: WarmWorker,
) -> None:
    # A cold stop raises SystemExit wherever the worker is, which can be between sending its
    # blocking dequeue and reading the reply: the connection goes back to the pool with that
    # reply unread, and the teardown's transaction would read it as its own.
    worker = idle_worker
    worker.register_birth()  # type: ignore[no-untyped-call]
    pool = worker.connection.connection_pool
    pending = pool.get_connection()
    pending.send_command("BLPOP", worker.queues[0].key, 0.01)  # type: ignore[no-untyped-call]
    pool.release(pending)

    worker.register_death()
    assert worker.connection.hget(worker.key, "death") is not None


def test_a_failed_generation_is_a_job_state(bare: Deployment, tmp_path: Path) -> None:
    api = bare.api
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("the result store cannot create job folders under a file")
    worker = start_worker(
        bare.stack, bare.env | settings_env(result_store=f"file://{blocked}"), "lifecycle-d"
    )
    poll(lambda: worker_count(api) == 1, "the worker with a broken result store")

    reply = submit(api, prefer="wait=60", prompt="cannot be stored", steps=2)
    assert reply.status_code == 200  # the request was fine; the job failed
    job = reply.json()
    assert job["status"] == "failed"
    assert "NotADirectoryError" in job["error"] or "FileExistsError" in job["error"]
    assert job["links"]["images"] == []
    assert job["timings"]["inference"] > 0
    image = api.client.get(f"/v1/jobs/{job['id']}/images/0")
    assert image.status_code == 404 and image.json()["error"]["code"] == "image_not_found"
    scrape = httpx.get(f"{worker.metrics_url}/metrics").text
    failed = f'sd3serve_jobs_finished_total{{model="{TINY_MODEL}",status="failed"}} 1.0'
    assert failed in scrape

    # The worker survives its failed job and serves the next one the same way.
    assert submit(api, prefer="wait=60", prompt="again", steps=1).json()["status"] == "failed"
    worker.process.terminate()
    assert worker.process.wait(timeout=60) == 0


class RoundTrips:
    """Round trips to Redis made in this process since the latest pop of a job (BLMOVE): each
    single command or pipeline is one write of packed commands."""

    def __init__(self) -> None:
        self.since_pop = 0

    def __call__(self, send: Callable[..., None]) -> Callable[..., None]:
        def counted(
            connection: object, command: bytes | list[bytes], *args: Any, **kw: Any
        ) -> None:
            packed = command if isinstance(command, bytes) else b"".join(command)
            self.since_pop = 0 if b"BLMOVE" in packed else self.since_pop + 1
            send(connection, command, *args, **kw)

        return counted


TRIPS = RoundTrips()


def rq_records_of_the_running_job() -> dict[str, object]:
    """What RQ's records say of the job running this, read from within it (a job function),
    and the round trips made from the pop of the job to this call."""
    trips = TRIPS.since_pop
    job = get_current_job()
    assert job is not None and job.worker_name is not None
    redis = job.connection
    queue = Queue(job.origin, connection=redis)
    (execution,) = job.get_executions()
    return {
        "round trips": trips,
        "status": job.get_status(refresh=True),
        "started at": job.started_at is not None,
        "persisted": redis.ttl(job.key) == -1,
        "last heartbeat": job.last_heartbeat is not None,
        "worker state": redis.hget(f"rq:worker:{job.worker_name}", "state"),
        "started registry": queue.started_job_registry.get_job_ids(),
        "intermediate queue": redis.lrange(queue.intermediate_queue_key, 0, -1),
        "execution of this worker": execution.worker_name == job.worker_name,
    }


def test_a_job_starts_with_rqs_records_in_one_round_trip_after_its_pop(
    idle_worker: WarmWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # WarmWorker reads the popped job and writes the commands of RQ's two preparing
    # transactions in one transaction, and leaves the worker's idle state to its next dequeue:
    # RQ's records must not notice.
    monkeypatch.setattr(
        AbstractConnection, "send_packed_command", TRIPS(AbstractConnection.send_packed_command)
    )
    connection = idle_worker.connection
    plain_name = f"{idle_worker.name}-rq"
    plain = SimpleWorker(
        [Queue(plain_name, connection=connection)], connection=connection, name=plain_name
    )
    seen: dict[str, dict[str, object]] = {}
    for worker in (plain, idle_worker):
        queued = worker.queues[0].enqueue(rq_records_of_the_running_job)
        dequeued = worker.dequeue_job_and_maintain_ttl(timeout=5)
        assert dequeued is not None and dequeued[0].id == queued.id
        worker.execute_job(*dequeued)
        assert queued.get_status(refresh=True) is JobStatus.FINISHED
        records = queued.return_value()
        assert isinstance(records, dict)
        assert records.pop("started registry") == [queued.id]
        seen[worker.name] = records
    trips = {name: records.pop("round trips") for name, records in seen.items()}
    assert seen[idle_worker.name] == seen[plain_name]
    assert seen[plain_name]["status"] is JobStatus.STARTED
    assert seen[plain_name]["worker state"] == b"busy"
    # RQ's: its read of the job, a heartbeat's three commands one by one, its two transactions.
    assert (trips[plain_name], trips[idle_worker.name]) == (6, 1)


def test_a_popped_job_rq_no_longer_has_is_passed_by(idle_worker: WarmWorker) -> None:
    # Deleted or expired between its enqueue and its pop: RQ's dequeue passes it by, and so
    # does WarmWorker, whose start (written before it reads the job) leaves nothing behind.
    connection = idle_worker.connection
    queue = idle_worker.queues[0]
    gone = queue.enqueue(rq_records_of_the_running_job)
    connection.delete(gone.key)
    dequeued = idle_worker.dequeue_job_and_maintain_ttl(timeout=5)
    assert dequeued is not None and dequeued[0].id == gone.id
    idle_worker.execute_job(*dequeued)
    assert connection.exists(gone.key) == 0
    assert queue.started_job_registry.get_job_ids() == []
    assert connection.keys(f"*{gone.id}*") == []
    assert idle_worker.executions == {}
    # The next job runs as any does.
    queued = queue.enqueue(rq_records_of_the_running_job)
    dequeued = idle_worker.dequeue_job_and_maintain_ttl(timeout=5)
    assert dequeued is not None and dequeued[0].id == queued.id
    idle_worker.execute_job(*dequeued)
    assert queued.get_status(refresh=True) is JobStatus.FINISHED


def start_calls(sent: Sent) -> tuple[int, int]:
    """START's calls inside a transaction (RQ's, WarmWorker.execute_job) and outside one."""
    inside = outside = 0
    for commands in sent.by_client().values():
        transaction = False
        for command in commands:
            if command in ("MULTI", "EXEC"):
                transaction = command == "MULTI"
            elif command == evalsha(jobstore.START):
                inside, outside = (inside + 1, outside) if transaction else (inside, outside + 1)
    return inside, outside


def test_a_job_starts_in_rqs_transaction_and_after_a_redis_lost_the_script_too(
    bare: Deployment,
) -> None:
    api = bare.api
    worker = start_worker(bare.stack, bare.env, "lifecycle-start")
    poll(lambda: worker_count(api) == 1, "the worker")
    with Redis.from_url(bare.redis_url) as redis:
        for prompt, flushed, starts in (
            ("loads the script", False, None),  # the first START may find it missing
            ("then goes in RQ's transaction", False, (1, 0)),
            # NOSCRIPT in the transaction: the runner sends START itself, which loads it.
            ("after a flush", True, (1, 2)),
            ("and again in the transaction", False, (1, 0)),
        ):
            if flushed:
                redis.script_flush()
            with commands_sent(bare.redis_url) as sent:
                job = wait_final(api, submit(api, prompt=prompt, steps=2).json()["id"])
            assert (job["status"], job["attempts"]) == ("succeeded", 1), job
            if starts is not None:
                assert start_calls(sent) == starts, sent.by_client()
    worker.process.terminate()
    assert worker.process.wait(timeout=60) == 0


def stopped_in_its_pop(redis: Redis, worker: Worker) -> bool:
    """SIGSTOP the worker while Redis holds its blocking pop: Redis then completes the pop for
    the next job queued, the worker to read it once continued. False (the worker continued)
    if the pop was not held at the time."""

    def popping() -> bool:
        return any(c["cmd"] == "blmove" and "b" in c["flags"] for c in redis.client_list())

    if not popping():
        return False
    worker.process.send_signal(signal.SIGSTOP)
    if popping():  # still held once stopped: not timed out in between
        return True
    worker.process.send_signal(signal.SIGCONT)
    return False


def test_a_job_whose_rq_record_vanished_after_its_pop_ends_failed(bare: Deployment) -> None:
    # The worker pops the id, then finds RQ's hash gone when its start's transaction reads it:
    # no run, nothing of RQ's left behind, and the job ends instead of going round the queue.
    api = bare.api
    worker = start_worker(bare.stack, bare.env, "lifecycle-vanished")
    poll(lambda: worker_count(api) == 1, "the worker")
    with Redis.from_url(bare.redis_url, decode_responses=True) as redis:
        poll(lambda: stopped_in_its_pop(redis, worker), "the worker stopped in its pop")
        try:
            job_id = submit(api, prompt="vanishes", steps=2).json()["id"]
            assert redis.lpos(keys.rq_dequeued(TINY_MODEL), job_id) is not None  # popped
            redis.delete(keys.rq_job(job_id))
        finally:
            worker.process.send_signal(signal.SIGCONT)
        job = wait_final(api, job_id)
        assert (job["status"], job["error"]) == ("failed", jobstore.RQ_LOST), job
        assert redis.exists(keys.rq_job(job_id)) == 0
        assert redis.keys(f"rq:execution*{job_id}*") == []
        assert redis.zrange(keys.rq_started(TINY_MODEL), 0, -1) == []
    # The worker goes on serving.
    assert submit(api, prefer="wait=60", prompt="next", steps=1).json()["status"] == "succeeded"
    worker.process.terminate()
    assert worker.process.wait(timeout=60) == 0
