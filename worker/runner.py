"""Running one queued job: start it, denoise with progress and cancellation, store, finish.

A Redis outage does not end a job: denoising goes on without progress reports, and each write
the job needs (START, FINISH) is retried until Redis is back. Only a worker asked to stop while
Redis is away leaves the job, unfinished and still marked running on it: once its heartbeat is
missed for long enough, a reaper on another worker puts the job back on its queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from PIL.Image import Image

from common.contract import GenerateParams, JobStatus, Timings
from common.jobstore import CANCELED_RUNNING, Outcome, Steer
from common.results import ResultStore
from worker import metrics
from worker.encode import encode, image_parameters
from worker.pipeline import StepCallback
from worker.recovery import REDIS_DOWN, RETRY_FIRST_S, RETRY_MAX_S, Outage, pause
from worker.store import WorkerJobStore

log = logging.getLogger(__name__)
T = TypeVar("T")
# During an outage a step tries to report its progress at most this often.
PROGRESS_RETRY_S = 1.0
# What `run` returns for a job it left to the reaper.
LEFT = "left to the reaper"


class Generator(Protocol):
    def generate(self, params: GenerateParams, on_step: StepCallback | None = None) -> list[Image]:
        """Run one job, calling `on_step` after each denoising step."""
        ...


class JobCanceled(Exception):
    """Raised from the step callback to leave the pipeline before its VAE decode."""


class JobLeft(Exception):
    """Raised from the step callback when the job is no longer this worker's to run."""


class Abandoned(Exception):
    """The worker is stopping while Redis is away: the job is left to the reaper."""


def _never() -> bool:
    return False


class JobRunner:
    def __init__(
        self,
        pipeline: Generator,
        store: WorkerJobStore,
        results: ResultStore,
        labels: metrics.JobLabels,
        *,
        outage: Outage | None = None,
        stopping: Callable[[], bool] = _never,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.results = results
        self.labels = labels
        self.outage = outage or Outage()
        self.stopping = stopping
        # The job started and not yet ended here, for the heartbeat to report.
        self.current: str | None = None
        # PIL releases the GIL while compressing, so a job's images encode side by side.
        self.encoder = ThreadPoolExecutor(max_workers=4, thread_name_prefix="encode")

    def run(self, job_id: str) -> str:
        try:
            return self._run(job_id)
        except Abandoned:
            log.warning(
                "job %s left unfinished: stopping while Redis is unreachable; it is put back on "
                "its queue once this worker's heartbeat has lapsed",
                job_id,
            )
            return LEFT
        finally:
            self.current = None

    def _run(self, job_id: str) -> str:
        state = self._through_outage(lambda: self.store.start(job_id))
        if state is not Outcome.running:
            log.info("job %s not started: it is %s", job_id, state)
            return state
        self.current = job_id
        record = self._through_outage(lambda: self.store.get(job_id))
        if record is None:  # expired between start and read
            return Outcome.missing
        params = record.params
        labels = self.labels.of(params.width, params.height, params.steps)
        model, resolution, _ = labels
        timings = Timings()
        status, image_count, error = JobStatus.succeeded, None, None
        try:
            if params.model != model:
                # The API queues a job on its model's own queue; anything else is a bug.
                raise RuntimeError(f"job for model {params.model!r} reached a {model!r} worker")
            started = time.perf_counter()
            images = self.pipeline.generate(params, self._step_callback(job_id, model, resolution))
            timings.inference = time.perf_counter() - started
            started = time.perf_counter()
            self._store_images(job_id, params, images)
            timings.encode = time.perf_counter() - started
            metrics.ENCODE.labels(model, resolution).observe(timings.encode)
            image_count = len(images)
        except JobCanceled:
            status, error = JobStatus.canceled, CANCELED_RUNNING
        except JobLeft:
            log.info("job %s left: it is no longer this worker's to run", job_id)
            return LEFT
        except Abandoned:
            raise
        except Exception as exc:  # a failed generation is a job state, reported to the client
            log.exception("job %s failed", job_id)
            status, error = JobStatus.failed, f"{type(exc).__name__}: {exc}"
        outcome = self._through_outage(
            lambda: self.store.finish(
                job_id, status, timings=timings, image_count=image_count, error=error
            )
        )
        # The first finish wins: a job the API already failed, or one that expired, keeps that.
        if outcome.status is not None and outcome.status.terminal:
            self._observe(job_id, outcome.status, labels)
        return outcome.value

    def _through_outage(self, call: Callable[[], T]) -> T:
        """`call`'s result, retried while Redis is down; Abandoned if the worker is stopping."""
        delay = RETRY_FIRST_S
        while True:
            try:
                result = call()
            except REDIS_DOWN as exc:
                self.outage.failed(exc)
            else:
                self.outage.ok()
                return result
            if self.stopping():
                raise Abandoned()
            pause(delay, self.stopping)
            delay = min(2 * delay, RETRY_MAX_S)

    def _step_callback(self, job_id: str, model: str, resolution: str) -> StepCallback:
        last = time.perf_counter()
        last_report = float("-inf")

        def on_step(step: int, total: int) -> None:
            nonlocal last, last_report
            now = time.perf_counter()
            if step == 0:  # denoising starts: the prompt encoding before it is no step's time
                last = now
                return
            metrics.STEP.labels(model, resolution).observe(now - last)
            last = now
            if self.outage.down and now - last_report < PROGRESS_RETRY_S:
                return  # each failed report costs a step its retries
            last_report = now
            try:
                steer = self.store.report(job_id, step, total)
            except REDIS_DOWN as exc:
                self.outage.failed(exc)
                if self.stopping():
                    raise Abandoned() from None
                return  # denoising needs no Redis: reports and the cancel check resume with it
            self.outage.ok()
            if steer is Steer.cancel:
                raise JobCanceled()
            if steer is Steer.leave:
                raise JobLeft()

        return on_step

    def _store_images(self, job_id: str, params: GenerateParams, images: list[Image]) -> None:
        def encode_and_store(index: int) -> None:
            parameters = image_parameters(params, index)
            data = encode(images[index], params.output_format, parameters)
            self.results.put(job_id, index, data, params.output_format)

        # Images are written before the job is marked succeeded, so every listed URL resolves.
        for future in [self.encoder.submit(encode_and_store, i) for i in range(len(images))]:
            future.result()

    def _observe(self, job_id: str, status: JobStatus, labels: tuple[str, str, str]) -> None:
        metrics.JOBS_FINISHED.labels(labels[0], status.value).inc()
        try:
            record = self.store.get(job_id)
        except REDIS_DOWN:
            return  # the job is done; only its latency metrics are lost
        if record is None:
            return
        t = record.timings
        if t.total is not None:
            metrics.JOB_LATENCY.labels(*labels).observe(t.total)
        if t.queue_wait is not None:
            metrics.QUEUE_WAIT.labels(*labels).observe(t.queue_wait)
        if t.inference is not None:
            metrics.INFERENCE.labels(*labels).observe(t.inference)
