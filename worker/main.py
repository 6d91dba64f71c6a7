"""The worker process: load the pipeline once, warm it, announce it, then run jobs one by one."""

from __future__ import annotations

import logging
import socket
import threading
import time
from datetime import UTC, datetime

import torch
from redis import Redis
from rq import Queue, SimpleWorker, get_current_job

from worker import metrics, tasks
from worker.pipeline import WarmPipeline
from worker.runner import JobRunner
from worker.settings import WorkerSettings
from worker.store import WorkerJobStore

log = logging.getLogger("sd3serve.worker")


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

    def register_death(self) -> None:
        # RQ stops an idle worker by raising StopRequested from its SIGTERM handler, which can
        # land between sending the blocking dequeue and reading its reply. That connection
        # goes back to the pool with the reply unread, and the death's transaction would read
        # it as its own ("Wrong number of response items"), failing a clean stop. Nothing else
        # uses RQ's connections by now, so start the teardown on fresh ones.
        self.connection.connection_pool.disconnect()
        super().register_death()  # type: ignore[no-untyped-call]


class Heartbeat:
    """Tells the API this worker is warm, and purges expired results while it is at it."""

    def __init__(self, settings: WorkerSettings, store: WorkerJobStore) -> None:
        self.settings = settings
        self.store = store
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        period = self.settings.heartbeat_s
        ttl = max(2, int(period * 3))
        last_purge = 0.0
        while not self.stopped.is_set():
            try:
                self.store.heartbeat(self.settings.worker_name, ttl)
                if time.monotonic() - last_purge > 600:
                    self.settings.result_store().purge_older_than(self.settings.result_ttl_s)
                    last_purge = time.monotonic()
            except Exception:  # a Redis blip must not kill the heartbeat for good
                log.exception("heartbeat failed")
            self.stopped.wait(period)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.store.retire(self.settings.worker_name)


def run(settings: WorkerSettings) -> None:
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    ready = threading.Event()
    server = metrics.start_http_server(settings.metrics_host, settings.metrics_port, ready)
    # A wildcard bind is not an address anyone can dial; advertise the host name instead.
    host = settings.metrics_host
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    metrics_url = f"http://{shown}:{server.server_port}/metrics"
    log.info("worker %s metrics on %s", settings.worker_name, metrics_url)

    started = time.perf_counter()
    pipeline = WarmPipeline(settings)
    metrics.MODEL_LOAD.set(time.perf_counter() - started)
    log.info("loaded %s on %s as %s", settings.model, pipeline.device, pipeline.dtype)
    if settings.warmup:
        started = time.perf_counter()
        pipeline.warm_up()
        metrics.WARMUP.set(time.perf_counter() - started)

    store = WorkerJobStore(
        Redis.from_url(str(settings.redis_url), decode_responses=True), settings.result_ttl_s
    )
    rq_redis = Redis.from_url(str(settings.redis_url))  # RQ wants raw bytes
    worker = WarmWorker(
        [Queue(settings.queue_name, connection=rq_redis)],
        connection=rq_redis,
        name=settings.worker_name,
        maintenance_interval=settings.maintenance_interval_s,
        # An idle worker wakes from its blocking dequeue this often, so maintenance runs too.
        worker_ttl=settings.maintenance_interval_s + 15,
    )
    runner = JobRunner(
        pipeline,
        store,
        settings.result_store(),
        settings.resolution_labels(),
        keep_alive=lambda: worker.keep_alive(settings.job_heartbeat_s),
    )
    tasks.install(runner)
    store.publish_model(pipeline.info)

    heartbeat = Heartbeat(settings, store)
    ready.set()
    metrics.READY.set(1)
    heartbeat.start()
    print(f"sd3-serve worker {settings.worker_name} ready; metrics at {metrics_url}", flush=True)
    try:
        worker.work(logging_level="WARNING")
    finally:
        ready.clear()
        metrics.READY.set(0)
        heartbeat.stop()
        server.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(WorkerSettings())
