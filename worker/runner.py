"""Running one queued job: start it, denoise with progress and cancellation, store, finish."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from PIL.Image import Image

from common.contract import GenerateParams, JobStatus, Timings
from common.jobstore import Outcome
from common.results import ResultStore
from worker import metrics
from worker.encode import encode, image_parameters
from worker.pipeline import StepCallback, WarmPipeline
from worker.store import WorkerJobStore

log = logging.getLogger(__name__)
KEEP_ALIVE_EVERY_S = 1.0


class JobCanceled(Exception):
    """Raised from the step callback to leave the pipeline before its VAE decode."""


class JobRunner:
    def __init__(
        self,
        pipeline: WarmPipeline,
        store: WorkerJobStore,
        results: ResultStore,
        labels: metrics.JobLabels,
        keep_alive: Callable[[], None],
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.results = results
        self.labels = labels
        self.keep_alive = keep_alive
        # PIL releases the GIL while compressing, so a job's images encode side by side.
        self.encoder = ThreadPoolExecutor(max_workers=4, thread_name_prefix="encode")

    def run(self, job_id: str) -> str:
        state = self.store.start(job_id)
        if state is not Outcome.running:
            log.info("job %s not started: it is %s", job_id, state)
            return state
        record = self.store.get(job_id)
        if record is None:  # expired between start and read
            return Outcome.missing
        params = record.params
        labels = self.labels.of(params.width, params.height, params.steps)
        model, resolution, _ = labels
        timings = Timings()
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
        except JobCanceled:
            outcome = self.store.finish(
                job_id,
                JobStatus.canceled,
                timings=timings,
                error="canceled by the client while running",
            )
        except Exception as exc:  # a failed generation is a job state, reported to the client
            log.exception("job %s failed", job_id)
            error = f"{type(exc).__name__}: {exc}"
            outcome = self.store.finish(job_id, JobStatus.failed, timings=timings, error=error)
        else:
            outcome = self.store.finish(
                job_id, JobStatus.succeeded, timings=timings, image_count=len(images)
            )
        # The first finish wins: a job the API already failed, or one that expired, keeps that.
        if outcome.status is not None:
            self._observe(job_id, outcome.status, labels)
        return outcome.value

    def _step_callback(self, job_id: str, model: str, resolution: str) -> StepCallback:
        last = time.perf_counter()
        last_alive = float("-inf")  # the first step renews at once

        def on_step(step: int, total: int) -> None:
            nonlocal last, last_alive
            now = time.perf_counter()
            metrics.STEP.labels(model, resolution).observe(now - last)
            last = now
            if now - last_alive >= KEEP_ALIVE_EVERY_S:
                self.keep_alive()  # so RQ knows the job is still denoising
                last_alive = now
            if self.store.progress(job_id, step, total):
                raise JobCanceled()

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
        record = self.store.get(job_id)
        if record is None:
            return
        t = record.timings
        if t.total is not None:
            metrics.JOB_LATENCY.labels(*labels).observe(t.total)
        if t.queue_wait is not None:
            metrics.QUEUE_WAIT.labels(*labels).observe(t.queue_wait)
        if t.inference is not None:
            metrics.INFERENCE.labels(*labels).observe(t.inference)
