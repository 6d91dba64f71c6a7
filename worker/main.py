"""The worker process: load the pipeline once, warm it, announce it, then run jobs one by one."""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from redis import Redis
from redis.client import Pipeline, PubSub, PubSubWorkerThread
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, worker_registration
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job
from rq.logutils import setup_loghandlers
from rq.utils import as_text, get_version, now
from rq.worker.base import WorkerStatus

from common import keys, workers
from common.contract import ModelInfo
from common.gc_freeze import freeze_startup_objects
from worker import metrics, tasks
from worker.pipeline import WarmPipeline
from worker.progress import ProgressReporter
from worker.recovery import (
    REDIS_DOWN,
    RETRY_FIRST_S,
    RETRY_MAX_S,
    Outage,
    Reaper,
    connect,
    pause,
    through_outage,
)
from worker.runner import JobRunner
from worker.settings import WorkerSettings
from worker.store import WorkerJobStore, new_worker_id

log = logging.getLogger("sd3serve.worker")

# How long an idle worker blocks on the queue before it looks at its stop flag again.
IDLE_POLL_S = 1
# The Redis that has LMOVE, which RQ's dequeue uses from then on.
LMOVE_SINCE = (6, 2, 0)
# How often a worker deletes images older than the result TTL.
PURGE_EVERY_S = 600
# RQ sets its connection's socket timeout to this less 5 s (11 s): a Redis that stops answering
# fails a command within that, instead of RQ's default seven minutes, and a stop asked for then
# is honoured that soon.
RQ_WORKER_TTL_S = 16
# How long a pub/sub thread that lost Redis waits before it tries again.
PUBSUB_RETRY_S = 2.0


class Starter(Protocol):
    """Who starts the jobs a worker runs (worker.runner.JobRunner), in RQ's transaction."""

    def start_on(self, job_id: str, pipe: Pipeline) -> None:
        """Queue the job's START on `pipe`, RQ's transaction recording that it starts."""
        ...

    def started_on(self, job_id: str, reply: object) -> None:
        """The transaction's reply to that START: a value, or the error in its place."""
        ...

    def passed_by(self, job_id: str) -> None:
        """RQ handed over the job, yet no longer has it: end it, as it can never run."""
        ...


class WarmWorker(SimpleWorker):
    """Runs jobs in this very process, and rides out Redis outages.

    RQ's default worker forks a child per job; the child would lose the warm pipeline (and a
    fork after CUDA has started is unsafe), so every job runs here, one at a time.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # `run` shares its own; a worker built alone (as tests do) has one to itself.
        self.outage = Outage()
        # Puts a job this worker popped but never ran back on its queue (`run` sets it).
        self.give_back: Callable[[str], None] = _keep
        self._born = False
        # The job whose start execute_job has already sent (prepare_job_execution skips it).
        self._started: str | None = None
        # The job popped and not yet handed to the runner: given back should Redis fail first.
        self._in_hand: str | None = None
        # Sends each job's own START in the transaction that records its start (`run` sets it).
        self.starter: Starter | None = None

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def listen_for_stop(self) -> None:
        """From now on SIGTERM and SIGINT request a stop (RQ's handlers, `_shutdown`)."""
        self._install_signal_handlers()  # type: ignore[no-untyped-call]

    def serve(self, logging_level: str = "WARNING") -> None:
        """RQ's job loop (`work`), resumed after every Redis outage until a stop is requested.

        RQ's own loop quits for good on the first error from Redis, so a worker would have to be
        restarted, and reload its pipeline, after any Redis restart. Here an outage costs only
        the wait: Redis is tried again with a growing backoff, logged once per outage, and a
        stop is honoured within a moment. A job popped but not yet run when Redis went away is
        put back on its queue once Redis is back; one the runner has, it finishes itself.
        """
        for logger in ("rq.worker", "rq.job"):
            setup_loghandlers(logging_level, name=logger)
        self.listen_for_stop()
        registered = False
        delay = RETRY_FIRST_S
        try:
            while not self._stop_requested:
                try:
                    if not registered:
                        self._register()
                        registered = True
                    if self._in_hand is not None:
                        self.give_back(self._in_hand)
                        self._in_hand = None
                    self.check_for_suspension(burst=False)
                    if self.should_run_maintenance_tasks:
                        self.run_maintenance_tasks()  # type: ignore[no-untyped-call]
                    result = self.dequeue_job_and_maintain_ttl(self.dequeue_timeout)
                    if result is None:
                        break
                    job, queue = result
                    self._in_hand = job.id
                    self.execute_job(job, queue)
                except REDIS_DOWN as exc:
                    self.outage.failed(exc)
                    # RQ's record of a run cut short is left for the reaper: this worker stops
                    # keeping it alive, and registers itself afresh once Redis is back.
                    self.executions.clear()
                    registered = False
                    pause(delay, lambda: self._stop_requested)
                    delay = min(2 * delay, RETRY_MAX_S)
                else:
                    self.outage.ok()
                    delay = RETRY_FIRST_S
        finally:
            self._retire()

    def _register(self) -> None:
        """RQ's bootstrap, done again after an outage: Redis may have lost this worker's record
        (or kept it, death-less, which RQ's registration would take for a live namesake)."""
        if not self._born:
            self.register_birth()  # type: ignore[no-untyped-call]
            self._born = True
        else:
            with self.connection.pipeline() as pipe:
                pipe.delete(self.key)
                pipe.hset(self.key, mapping=self.serialize())
                worker_registration.register(self, pipe)
                pipe.expire(self.key, self.worker_ttl + 60)
                pipe.execute()
        if self.pubsub_thread is None:
            self.subscribe()  # type: ignore[no-untyped-call]
        self.set_state(WorkerStatus.STARTED)

    def _retire(self) -> None:
        """RQ's teardown, as far as Redis allows: a worker stopping during an outage still exits."""
        if self._born:
            try:
                self.register_death()
            except REDIS_DOWN:
                log.warning("could not record this worker's exit in Redis; its record lapses")
        if self.pubsub_thread is not None:
            try:
                self.unsubscribe()
            except REDIS_DOWN:
                self.pubsub_thread.stop()

    def _pubsub_exception_handler(
        self, exc: Exception, pubsub: PubSub, pubsub_thread: PubSubWorkerThread
    ) -> None:
        # RQ logs an error every retry; an outage is logged once, by the Outage.
        if isinstance(exc, REDIS_DOWN):
            self.outage.failed(exc)
            time.sleep(PUBSUB_RETRY_S)
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    def keep_alive(self, connection: Redis, ttl_s: int) -> None:
        """Push RQ's own expiry of the running job `ttl_s` ahead, from the heartbeat thread.

        RQ's own monitor lives in the parent of a forked job; with no fork nobody would refresh
        the job while it runs, and RQ would take a long one for abandoned. `connection` is the
        heartbeat thread's, so a refresh never waits behind the job's own commands.
        """
        running = list(self.executions.values())
        if not running:
            return
        execution = running[0]
        job = execution.job
        with connection.pipeline() as pipe:
            self.heartbeat(ttl_s + 60, pipeline=pipe)
            execution.heartbeat(job.started_job_registry, ttl_s, pipeline=pipe)
            job.heartbeat(now(), ttl_s, pipeline=pipe, xx=True)
            pipe.execute()

    def _shutdown(self) -> None:
        """Note a warm stop; the job loop acts on it. Runs inside the SIGTERM/SIGINT handler.

        RQ instead raises StopRequested here when the worker is idle, from whatever code the
        main thread is running when the handler fires. That exception can be lost: Python drops
        one raised inside a finalizer ("Exception ignored in ..."). CI once saw an idle worker
        ignore SIGTERM and keep taking jobs until a second signal cold-stopped it. A flag
        cannot be lost; the idle wait below is short so that it is seen promptly. RQ would
        also write the request's date to Redis from here, in the middle of whatever command
        the handler interrupted; that record is informational, so it is skipped.
        """
        self._stop_requested = True

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """Wait for a job in short blocking polls, giving up once a stop is requested.

        RQ's own wait retries a Redis that is down, with a backoff of up to a minute, without
        looking at the stop flag: a worker asked to stop during an outage stayed. Here an error
        from Redis is raised to `serve`, which waits it out watching the flag. This worker
        never sets an idle limit, so `max_idle_time` is not looked at.
        """
        if timeout is None:  # burst mode: RQ does not block at all
            return super().dequeue_job_and_maintain_ttl(None, max_idle_time)
        while not self._stop_requested:
            with self.connection.pipeline(transaction=False) as pipe:
                self.set_state(WorkerStatus.IDLE, pipeline=pipe)
                self.heartbeat(pipeline=pipe)
                pipe.execute()
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()  # type: ignore[no-untyped-call]
            try:
                result = self._pop(min(timeout, IDLE_POLL_S))
            except DequeueTimeout:
                continue
            if result is not None:
                job, queue = result
                self.reorder_queues(reference_queue=queue)
                job.redis_server_version = self.get_redis_server_version()  # type: ignore[no-untyped-call]
                # No heartbeat here, unlike RQ's: the job's preparation sends one a moment later.
                return result
        return None

    def _pop(self, timeout: int) -> tuple[Job, Queue] | None:
        """The next job of the queue, as RQ's `dequeue_any` pops it, but not read yet.

        RQ reads the popped job's hash in a round trip of its own; here it is read in the
        transaction that records the job's start (execute_job), a round trip fewer before
        denoising. Only the job's id and queue are needed to write that record. Where RQ would
        pop another way (more than one queue, a Redis older than 6.2), RQ pops and reads.
        """
        queues = self._ordered_queues
        if len(queues) != 1 or get_version(self.connection) < LMOVE_SINCE:
            return self.queue_class.dequeue_any(
                queues,
                timeout,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
        (queue,) = queues
        _, job_id = self.queue_class.lmove(self.connection, queue.key, timeout)
        job = self.job_class(
            as_text(job_id), connection=self.connection, serializer=self.serializer
        )
        job.origin = queue.name
        return job, queue

    def execute_job(self, job: Job, queue: Queue) -> None:
        """RQ's SimpleWorker.execute_job, and its read of the popped job, in one round trip
        that carries the job's START too (RQ's own: six from the pop to the job's function).

        RQ records the execution in one transaction (`prepare_execution`) and marks the job
        started in a second (`prepare_job_execution`, first thing in `perform_job`): here both
        are one, the job's queue wait a round trip shorter. The starter (the runner) queues the
        job's own START on it too, another round trip fewer before denoising; should Redis
        answer that START with an error, the starter sends it again itself. RQ then marks the
        worker idle in a round trip of its own; the next dequeue sends that with its heartbeat
        anyway.

        The job itself is read at the end of the same transaction (`_pop` leaves it unread), so
        RQ's job holds what RQ's would after its own start: its hash once the start is written.
        The heartbeat's time to live is the one of a job without a timeout, which is never less
        than RQ's for the job it reads: RQ renews it from the job's own at the next heartbeat.
        A job whose hash is gone by then (deleted or expired once queued) is passed by, as
        RQ's dequeue passes it by, but ended too (RQ's would be left queued, for a reaper to
        put back on the queue again and again); what the transaction wrote of its start goes.

        redis-py sends a transaction again when its reply does not come in time, so Redis may
        apply it twice: RQ's commands write the same values again, and START again by the job's
        holder changes nothing. Should it fail outright, the job is still in hand, started or
        not: `serve` gives it back once Redis answers, an unrun start not counted as an attempt.
        """
        ttl = self.get_heartbeat_ttl(job)
        starter = self.starter
        with self.connection.pipeline() as pipe:
            pipe.exists(job.key)
            execution = Execution.create(job, ttl, pipeline=pipe, worker_name=self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            self._mark_started(job, ttl, pipe)
            if starter is not None:
                starter.start_on(job.id, pipe)
            pipe.hgetall(job.key)
            existed, *replies, stored = pipe.execute(raise_on_error=False)
        if starter is not None:
            # Its error is the starter's to handle (NOSCRIPT: it sends START itself).
            starter.started_on(job.id, replies.pop())
        for reply in (existed, *replies, stored):
            if isinstance(reply, Exception):  # as RQ's own execute would
                raise reply
        if not existed:
            self._pass_by(job, execution)
            return
        job.restore(stored)
        self._started = job.id
        self._in_hand = None  # the runner's from here, outages included
        self.perform_job(job, queue, execution)

    def _pass_by(self, job: Job, execution: Execution) -> None:
        """Undo the start of a job RQ no longer has (the hash the start made of it, and its
        execution), and have the starter end the job, which no worker can run."""
        log.info("job %s passed by: RQ no longer has it", job.id)
        self.executions.pop(execution.id, None)
        with self.connection.pipeline() as pipe:
            execution.delete(job, pipe)
            pipe.delete(job.key)
            pipe.execute()
        if self.starter is not None:
            self.starter.passed_by(job.id)
        self._in_hand = None

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        if self._started == job.id:  # sent with the execution's record (execute_job)
            self._started = None
            return
        super().prepare_job_execution(job, remove_from_intermediate_queue)

    def _mark_started(self, job: Job, ttl: int, pipe: Pipeline) -> None:
        """The commands of RQ's `prepare_job_execution`, onto `pipe`."""
        self.heartbeat(ttl, pipeline=pipe)
        job.heartbeat(now(), ttl, pipeline=pipe)
        job.prepare_for_execution(self.name, pipeline=pipe)
        pipe.persist(job.key)
        if len(self.queues) == 1:  # as RQ's perform_job decides
            pipe.lrem(self.queues[0].intermediate_queue_key, 1, job.id)

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        # RQ sends a heartbeat's three commands a round trip each; here they are one.
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipe)
            pipe.execute()

    def register_death(self) -> None:
        # A cold stop (a second signal) raises SystemExit wherever the main thread is, which
        # can be between sending a command and reading its reply. That connection goes back to
        # the pool with the reply unread, and the death's transaction would read it as its own
        # ("Wrong number of response items"). Drop the idle pooled connections first; the
        # pub/sub thread's connection is in use and stays open until RQ unsubscribes.
        self.connection.connection_pool.disconnect(inuse_connections=False)
        super().register_death()  # type: ignore[no-untyped-call]


def _keep(job_id: str) -> None:
    """A worker with no reaper leaves a job it could not start to another worker's."""


class Heartbeat:
    """The worker's signs of life, on a thread of their own: they go on whatever the job is
    doing (torch releases the GIL in its long operations), so a long step never silences them.

    Each beat counts the worker warm and rewrites its model's record (so a Redis that lost it,
    after a restart without persistence or a flush, has it back within one period, and jobs for
    the model are accepted again without restarting any worker); tells the reapers that this run
    of the process is alive, and which job it runs; and pushes RQ's own expiry of that job
    ahead, so that RQ never takes a live worker's job for abandoned.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        redis: Redis,
        info: ModelInfo,
        worker_id: str,
        running: Callable[[], Sequence[str]],
        keep_alive: Callable[[Redis], None],
        outage: Outage,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.info = info
        self.worker_id = worker_id
        self.running = running
        self.keep_alive = keep_alive
        self.outage = outage
        self._beat = redis.register_script(workers.BEAT)
        self._alive = redis.register_script(workers.ALIVE)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def beat(self) -> None:
        ttl = max(2, int(self.settings.heartbeat_s * 3))  # lapses after three missed beats
        beat_keys, args = workers.beat_call(self.settings.worker_name, ttl, self.info)
        self._beat(keys=beat_keys, args=args)
        alive_keys, args = workers.alive_call(self.worker_id, self.info.id, self.running())
        self._alive(keys=alive_keys, args=args)
        self.keep_alive(self.redis)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(self.settings.heartbeat_s):
            try:
                self.beat()
            except REDIS_DOWN as exc:
                self.outage.failed(exc)
            except Exception:  # a fault in one beat must not end the heartbeat for good
                log.exception("heartbeat failed")
            else:
                self.outage.ok()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        try:
            with self.redis.pipeline() as pipe:
                pipe.zrem(keys.workers(self.info.id), self.settings.worker_name)
                # A job this worker holds still (left in an outage) is taken back at once.
                pipe.zrem(keys.beats(self.info.id), self.worker_id)
                pipe.execute()
        except RedisError:
            log.warning("could not retire this worker's heartbeat; it lapses by itself")


class Housekeeping:
    """Taking back the jobs of workers that are gone, and purging old results, on a thread of
    their own: a slow purge of an object store must not hold up a heartbeat."""

    def __init__(self, settings: WorkerSettings, reaper: Reaper, outage: Outage) -> None:
        self.settings = settings
        self.reaper = reaper
        self.outage = outage
        self.results = settings.open_results()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="housekeeping", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        last_purge = float("-inf")
        while not self.stopped.wait(self.settings.heartbeat_s):
            try:
                self.reaper.reap()
            except REDIS_DOWN as exc:
                self.outage.failed(exc)
            except Exception:
                log.exception("looking for the jobs of lost workers failed")
            else:
                self.outage.ok()
            if time.monotonic() - last_purge > PURGE_EVERY_S:
                try:
                    self.results.purge_older_than(self.settings.result_ttl_s)
                    last_purge = time.monotonic()
                except Exception:  # a store blip: tried again at the next period
                    log.exception("purging old results failed")

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


def _redis_answers(redis: Redis) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return bool(redis.ping())
        except RedisError:
            return False

    return check


def run(settings: WorkerSettings) -> None:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    name = settings.served_name
    url = str(settings.redis_url)
    outage = Outage()  # shared by every thread of the process that talks to Redis
    # The probe's own client: a short timeout, so a stalled Redis fails /readyz, not the prober.
    probe = Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    warm = threading.Event()
    server = metrics.start_http_server(
        settings.metrics_host, settings.metrics_port, warm, _redis_answers(probe)
    )
    # A wildcard bind is not an address anyone can dial; advertise the host name instead.
    host = settings.metrics_host
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    metrics_url = f"http://{shown}:{server.server_port}/metrics"
    log.info("worker %s of model %s: metrics on %s", settings.worker_name, name, metrics_url)

    started = time.perf_counter()
    pipeline = WarmPipeline(settings)
    metrics.MODEL_LOAD.set(time.perf_counter() - started)
    log.info("loaded %s on %s as %s", settings.model, pipeline.device, pipeline.dtype)
    if settings.warmup:
        started = time.perf_counter()
        pipeline.warm_up()
        metrics.WARMUP.set(time.perf_counter() - started)

    worker_id = new_worker_id(settings.worker_name)
    store = WorkerJobStore(
        connect(url, decode=True),
        settings.result_ttl_s,
        worker=worker_id,
        silence_s=settings.silence_s,
    )
    rq_redis = connect(url)  # RQ wants raw bytes
    # From here on a worker that came up before its Redis waits for it, keeping the model it
    # has just loaded (minutes of work for a large one) rather than exiting to load it again.
    # RQ's worker names its connection on Redis as it is built: the first command sent.
    worker = through_outage(
        lambda: WarmWorker(
            [Queue(keys.queue_name(name), connection=rq_redis)],
            connection=rq_redis,
            name=settings.worker_name,
            maintenance_interval=settings.maintenance_interval_s,
            worker_ttl=RQ_WORKER_TTL_S,
        ),
        outage,
    )
    worker.outage = outage
    # Its own client: progress writes never queue behind the job's own commands.
    progress = ProgressReporter(
        WorkerJobStore(
            connect(url, decode=True),
            settings.result_ttl_s,
            worker=worker_id,
            silence_s=settings.silence_s,
        ),
        outage,
        interval_s=settings.progress_interval_s,
    )
    runner = JobRunner(
        pipeline,
        store,
        settings.open_results(),
        metrics.JobLabels(name, settings.resolution_labels(), settings.step_labels()),
        outage=outage,
        stopping=lambda: worker.stop_requested,
        max_batch=settings.max_batch,
        progress=progress,
        png=settings.png_options(),
    )
    tasks.install(runner)
    worker.starter = runner
    # Each thread its own client, so that no thread's commands queue behind another's.
    reaper = Reaper(
        connect(url, decode=True),
        name,
        ttl_s=settings.result_ttl_s,
        silence_s=settings.silence_s,
        outage=outage,
    )
    worker.give_back = lambda job_id: reaper.give_back(job_id, worker_id)
    # RQ's expiry of a running job, pushed ahead by every beat: past the reapers' deadline, so
    # that a job of a worker that died is taken back by a reaper, never abandoned by RQ too.
    rq_ttl_s = math.ceil(settings.worker_lost_after_s) + 60
    heartbeat = Heartbeat(
        settings,
        connect(url, decode=True),
        pipeline.info,
        worker_id,
        lambda: runner.held,
        lambda redis: worker.keep_alive(redis, rq_ttl_s),
        outage,
    )

    def publish() -> None:
        heartbeat.beat()  # the model, before readiness is announced
        reaper.reap()  # jobs of workers that died while none was up to notice

    through_outage(publish, outage)
    housekeeping = Housekeeping(settings, reaper, outage)
    freeze_startup_objects()
    # Before readiness is announced: a SIGTERM that follows it (a rollout) must stop the worker
    # cleanly. Installed only in `serve`, a SIGTERM in between killed it outright (exit -15).
    worker.listen_for_stop()
    warm.set()
    metrics.READY.labels(name).set(1)
    heartbeat.start()
    housekeeping.start()
    progress.start()
    print(
        f"sd3-serve worker {settings.worker_name} ready, serving {name}; metrics at {metrics_url}",
        flush=True,
    )
    try:
        worker.serve(logging_level="WARNING")
    finally:
        warm.clear()
        metrics.READY.labels(name).set(0)
        progress.stop()
        housekeeping.stop()
        heartbeat.stop()
        server.shutdown()
