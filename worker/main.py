"""The worker process: load the pipeline once, warm it, announce it, then run jobs one by one."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import torch
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, get_current_job
from rq.job import Job

from common import keys, workers
from common.contract import ModelInfo
from worker import metrics, tasks
from worker.pipeline import WarmPipeline
from worker.runner import JobRunner
from worker.settings import WorkerSettings
from worker.store import WorkerJobStore

log = logging.getLogger("sd3serve.worker")

# How long an idle worker blocks on the queue before it looks at its stop flag again.
IDLE_POLL_S = 1
# How often a worker deletes images older than the result TTL.
PURGE_EVERY_S = 600


class WarmWorker(SimpleWorker):
    """Runs jobs in this very process.

    RQ's default worker forks a child per job; the child would lose the warm pipeline (and a
    fork after CUDA has started is unsafe), so every job runs here, one at a time.
    """

    def keep_alive(self, ttl_s: int) -> None:
        """Push the running job's expiry `ttl_s` ahead, from inside the job.

        RQ's own monitor lives in the parent of a forked job; with no fork nobody refreshes the
        job while it runs, so a worker that died mid-job would go unnoticed until the job's
        whole timeout had passed. The runner calls this between denoising steps instead.
        """
        job = get_current_job()
        execution = self.execution
        if job is None or execution is None:
            return
        with self.connection.pipeline() as pipeline:
            self.heartbeat(ttl_s + 60, pipeline=pipeline)
            execution.heartbeat(job.started_job_registry, ttl_s, pipeline=pipeline)
            job.heartbeat(datetime.now(UTC), ttl_s, pipeline=pipeline, xx=True)
            pipeline.execute()

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

        This worker never sets an idle limit, so `max_idle_time` is not looked at.
        """
        if timeout is None:  # burst mode: RQ does not block at all
            return super().dequeue_job_and_maintain_ttl(None, max_idle_time)
        while not self._stop_requested:
            wait = min(timeout, IDLE_POLL_S)
            # With an idle limit equal to the wait, RQ returns None after one empty poll.
            result = super().dequeue_job_and_maintain_ttl(wait, max_idle_time=wait)
            if result is not None:
                return result
        return None

    def register_death(self) -> None:
        # A cold stop (a second signal) raises SystemExit wherever the main thread is, which
        # can be between sending a command and reading its reply. That connection goes back to
        # the pool with the reply unread, and the death's transaction would read it as its own
        # ("Wrong number of response items"). Drop the idle pooled connections first; the
        # pub/sub thread's connection is in use and stays open until RQ unsubscribes.
        self.connection.connection_pool.disconnect(inuse_connections=False)
        super().register_death()  # type: ignore[no-untyped-call]


class Heartbeat:
    """Keeps this worker counted as warm and its model's record in Redis, and purges results.

    Each beat rewrites the model record, so a Redis that lost it (a restart without
    persistence, a flush) has it back within one period, and jobs for the model are accepted
    again without restarting any worker.
    """

    def __init__(self, settings: WorkerSettings, redis: Redis, info: ModelInfo) -> None:
        self.settings = settings
        self.redis = redis
        self.info = info
        self.results = settings.open_results()
        self._beat = redis.register_script(workers.BEAT)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def beat(self) -> None:
        ttl = max(2, int(self.settings.heartbeat_s * 3))  # lapses after three missed beats
        keys, args = workers.beat_call(self.settings.worker_name, ttl, self.info)
        self._beat(keys=keys, args=args)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        last_purge = float("-inf")
        while not self.stopped.wait(self.settings.heartbeat_s):
            try:
                self.beat()
                if time.monotonic() - last_purge > PURGE_EVERY_S:
                    self.results.purge_older_than(self.settings.result_ttl_s)
                    last_purge = time.monotonic()
            except Exception:  # a Redis or store blip must not kill the heartbeat for good
                log.exception("heartbeat failed")

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        try:
            self.redis.zrem(keys.workers(self.info.id), self.settings.worker_name)
        except RedisError:
            log.warning("could not retire this worker's heartbeat; it lapses by itself")


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
    redis = Redis.from_url(str(settings.redis_url), decode_responses=True)
    # The probe's own client: a short timeout, so a stalled Redis fails /readyz, not the prober.
    probe = Redis.from_url(str(settings.redis_url), socket_timeout=1, socket_connect_timeout=1)
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

    store = WorkerJobStore(redis, settings.result_ttl_s)
    rq_redis = Redis.from_url(str(settings.redis_url))  # RQ wants raw bytes
    worker = WarmWorker(
        [Queue(keys.queue_name(name), connection=rq_redis)],
        connection=rq_redis,
        name=settings.worker_name,
        maintenance_interval=settings.maintenance_interval_s,
        # RQ sets its connections' socket timeout to this less 5 s: a Redis that stops
        # answering fails the command within a minute instead of RQ's default seven.
        worker_ttl=60,
    )
    runner = JobRunner(
        pipeline,
        store,
        settings.open_results(),
        metrics.JobLabels(name, settings.resolution_labels(), settings.step_labels()),
        keep_alive=lambda: worker.keep_alive(settings.job_heartbeat_s),
    )
    tasks.install(runner)

    heartbeat = Heartbeat(settings, redis, pipeline.info)
    heartbeat.beat()  # publish the model before announcing readiness
    warm.set()
    metrics.READY.labels(name).set(1)
    heartbeat.start()
    print(
        f"sd3-serve worker {settings.worker_name} ready, serving {name}; metrics at {metrics_url}",
        flush=True,
    )
    try:
        worker.work(logging_level="WARNING")
    finally:
        warm.clear()
        metrics.READY.labels(name).set(0)
        heartbeat.stop()
        server.shutdown()
