"""Running queued jobs: start them, denoise with progress and cancellation, store, finish.

The job RQ hands the worker runs together with compatible jobs taken from the front of the same
queue (worker.batch), in one pipeline call; each keeps its own seeds, progress, cancellation,
images and final state. A job canceled mid-call leaves the batch, the others go on.

A Redis outage does not end a job: denoising goes on without progress reports, and each write
the job needs (START, FINISH) is retried until Redis is back. Only a worker asked to stop while
Redis is away leaves the job, unfinished and still marked running on it: once its heartbeat is
missed for long enough, a reaper on another worker puts the job back on its queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from PIL.Image import Image
from redis.client import Pipeline

from common.contract import GenerateParams, JobStatus, Timings
from common.jobstore import CANCELED_RUNNING, RQ_LOST, Outcome, Started, Steer, decode_start
from common.results import ResultStore
from worker import metrics
from worker.batch import LOOKAHEAD, pick
from worker.encode import PngOptions, encode, image_parameters
from worker.pipeline import BatchEmptied, BatchStepCallback
from worker.progress import ProgressReporter
from worker.recovery import REDIS_DOWN, Abandoned, Outage, never, through_outage
from worker.settings import DEFAULT_PNG, DEFAULT_PROGRESS_INTERVAL_S
from worker.store import WorkerJobStore

log = logging.getLogger(__name__)
T = TypeVar("T")
# What `run` returns for a job it left to the reaper.
LEFT = "left to the reaper"


class Generator(Protocol):
    def generate_batch(
        self, jobs: Sequence[GenerateParams], on_step: BatchStepCallback | None = None
    ) -> list[list[Image] | None]:
        """Run compatible jobs as one call, calling `on_step` after each denoising step; each
        job's images, None for a job `on_step` dropped."""
        ...


@dataclass
class Member:
    """One job of the batch a worker runs, and how it ended there."""

    id: str
    params: GenerateParams
    labels: tuple[str, str, str]
    # Taken off the queue into the batch (TAKE), so RQ never runs it and its record of the job
    # is ended here; the batch's first job is RQ's own run.
    taken: bool
    # What `run` reports for the job once it has ended (a final state, or LEFT); None before.
    outcome: str | None = None
    timings: Timings = field(default_factory=Timings)


class JobRunner:
    """Runs the job RQ hands this worker, with up to `max_batch` images' worth of compatible
    jobs taken from the same queue into the same pipeline call."""

    def __init__(
        self,
        pipeline: Generator,
        store: WorkerJobStore,
        results: ResultStore,
        labels: metrics.JobLabels,
        *,
        outage: Outage | None = None,
        stopping: Callable[[], bool] = never,
        max_batch: int = 1,
        progress: ProgressReporter | None = None,
        png: PngOptions = DEFAULT_PNG,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.results = results
        self.labels = labels
        self.outage = outage or Outage()
        self.stopping = stopping
        self.max_batch = max_batch
        self.png = png
        # Started at the first job when not given (a runner built alone, as tests do).
        self._progress = progress
        # The jobs started and not yet ended here, for the heartbeat to report.
        self.held: list[str] = []
        # START's reply for a job, carried by RQ's transaction (`start_on`), until `run` reads it.
        self._answered: tuple[str, object] | None = None
        # Both PNG encoders (ISA-L and numpy, or Pillow's zlib) release the GIL while they
        # compress, so a job's images encode side by side.
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
            self.held = []

    @property
    def lookahead(self) -> int:
        """The jobs START lists behind the one it starts, to batch with it."""
        return LOOKAHEAD if self.max_batch > 1 else 0

    def start_on(self, job_id: str, pipe: Pipeline) -> None:
        """Queue the START of the job RQ hands over next on `pipe`: RQ's transaction recording
        that the job starts (worker.main.WarmWorker.execute_job), which carries it a round
        trip sooner than `run` could send it. `started_on` takes the reply."""
        self._answered = None
        self.store.begin_on(job_id, self.lookahead, pipe)

    def started_on(self, job_id: str, reply: object) -> None:
        """START's reply from RQ's transaction, for `run` to read in the job: a reply it cannot
        read fails that job, as START's own would."""
        self._answered = (job_id, reply)

    def passed_by(self, job_id: str) -> None:
        """RQ handed over a job it no longer has (worker.main.WarmWorker passes it by): it can
        never run, so it ends failed, unless it has ended already (a canceled job's entry is
        deleted with it)."""
        try:
            self._through_outage(
                lambda: self.store.finish(
                    job_id, JobStatus.failed, timings=Timings(), error=RQ_LOST
                )
            )
        except Abandoned:
            log.warning("job %s not ended: stopping while Redis is unreachable", job_id)

    def _start(self, job_id: str) -> Started:
        """START's answer: the one RQ's transaction carried, else START sent now. An error in
        its place (NOSCRIPT from a Redis that lost the script, which `begin` loads) is sent
        again too."""
        answered, self._answered = self._answered, None
        if answered is None or answered[0] != job_id or isinstance(answered[1], Exception):
            return self._through_outage(lambda: self.store.begin(job_id, self.lookahead))
        return decode_start(answered[1])

    def _run(self, job_id: str) -> str:
        started = self._start(job_id)
        if started.params is None:  # not started: what START answers instead of running
            log.info("job %s not started: it is %s", job_id, started.outcome)
            return started.outcome
        self.held = [job_id]
        first = self._member(job_id, started.params, taken=False)
        batch = [first, *self._gather(first, started.queued)]
        self.held = [m.id for m in batch]
        metrics.BATCH_JOBS.labels(first.labels[0]).observe(len(batch))
        self._run_batch(batch)
        return first.outcome or LEFT

    def _member(self, job_id: str, params: GenerateParams, *, taken: bool) -> Member:
        return Member(
            job_id, params, self.labels.of(params.width, params.height, params.steps), taken
        )

    def _gather(self, first: Member, queued: Sequence[str]) -> list[Member]:
        """Compatible jobs among those `queued` at the front of the queue, taken to run with
        `first`; none while Redis is away (the job then runs alone)."""
        if self.max_batch <= first.params.num_images or not queued:
            return []
        try:
            waiting = self.store.params_of(queued)
            params = {job_id: p for job_id, p in waiting if p is not None}
            chosen = pick(first.params, [w for w in waiting if w[0] != first.id], self.max_batch)
            taken = self.store.take(chosen) if chosen else []
        except REDIS_DOWN as exc:
            # A job whose TAKE ran before the connection broke is running on this worker as far
            # as Redis knows, but no heartbeat names it: a reaper puts it back on its queue.
            self.outage.failed(exc)
            return []
        return [
            self._member(job_id, params[job_id], taken=True)
            for job_id, outcome in zip(chosen, taken, strict=True)
            if outcome is Outcome.running
        ]

    @property
    def progress(self) -> ProgressReporter:
        if self._progress is None:
            self._progress = ProgressReporter(
                self.store, self.outage, interval_s=DEFAULT_PROGRESS_INTERVAL_S
            )
            self._progress.start()
        return self._progress

    def _run_batch(self, batch: list[Member]) -> None:
        progress = self.progress
        progress.track(m.id for m in batch)
        try:
            self._denoise(batch)
        finally:
            for m in batch:
                progress.untrack(m.id)

    def _denoise(self, batch: list[Member]) -> None:
        model, resolution, _ = batch[0].labels
        started = time.perf_counter()
        try:
            if stray := [m.params.model for m in batch if m.params.model != model]:
                # The API queues a job on its model's own queue; anything else is a bug.
                raise RuntimeError(f"job for model {stray[0]!r} reached a {model!r} worker")
            images = self.pipeline.generate_batch(
                [m.params for m in batch], self._step_callback(batch, model, resolution)
            )
        except BatchEmptied:  # every job ended or was left during the call
            return
        except Abandoned:
            raise
        except Exception as exc:  # a failed generation is a job state, reported to the client
            log.exception("jobs %s failed", ", ".join(m.id for m in batch))
            for m in batch:
                if m.outcome is None:
                    self._finish(m, JobStatus.failed, error=f"{type(exc).__name__}: {exc}")
            return
        inference = time.perf_counter() - started
        for m, found in zip(batch, images, strict=True):
            if m.outcome is not None or found is None:
                continue
            # The job's last step written before its final state; a cancel or a loss of the job
            # that only this write learns of still counts.
            steer = self.progress.untrack(m.id)
            if steer is not Steer.go and self._steered(m, steer):
                continue
            m.timings.inference = inference
            try:
                started = time.perf_counter()
                self._store_images(m.id, m.params, found)
                m.timings.encode = time.perf_counter() - started
                metrics.ENCODE.labels(model, resolution).observe(m.timings.encode)
            except Exception as exc:
                log.exception("job %s failed", m.id)
                self._finish(m, JobStatus.failed, error=f"{type(exc).__name__}: {exc}")
            else:
                self._finish(m, JobStatus.succeeded, image_count=len(found))

    def _finish(
        self,
        m: Member,
        status: JobStatus,
        *,
        image_count: int | None = None,
        error: str | None = None,
    ) -> None:
        outcome = self._through_outage(
            lambda: self.store.finish(
                m.id, status, timings=m.timings, image_count=image_count, error=error
            )
        )
        m.outcome = outcome.value
        # The first finish wins: a job the API already failed, or one that expired, keeps that.
        ended = outcome.status
        if ended is not None and ended.terminal:
            if m.taken:
                self._through_outage(lambda: self.store.rq_finish(m.id, ended))
            self._observe(m.id, ended, m.labels)

    def _steered(self, m: Member, steer: Steer) -> bool:
        """Act on a job's cancel (it ends canceled now, not with the batch, so the client sees
        it at once) or its loss (another worker has it now: no write); whether it ended."""
        if steer is Steer.cancel:
            self._finish(m, JobStatus.canceled, error=CANCELED_RUNNING)
            return True
        if steer is Steer.leave:
            log.info("job %s left: it is no longer this worker's to run", m.id)
            m.outcome = LEFT
            return True
        return False

    def _through_outage(self, call: Callable[[], T]) -> T:
        return through_outage(call, self.outage, self.stopping)

    def _step_callback(self, batch: list[Member], model: str, resolution: str) -> BatchStepCallback:
        last = time.perf_counter()
        step_seconds = metrics.STEP.labels(model, resolution)  # looked up once, not per step

        def on_step(step: int, total: int) -> list[int]:
            nonlocal last
            now = time.perf_counter()
            if step == 0:  # denoising starts: the prompt encoding before it is no step's time
                last = now
                return []
            step_seconds.observe(now - last)
            last = now
            if self.stopping() and self.outage.down:
                raise Abandoned()
            drop: list[int] = []
            for index, m in enumerate(batch):
                if m.outcome is not None:
                    continue
                self.progress.step(m.id, step, total)
                steer = self.progress.steer(m.id)
                if steer is not Steer.go and self._steered(m, steer):
                    drop.append(index)
            return drop

        return on_step

    def _store_images(self, job_id: str, params: GenerateParams, images: list[Image]) -> None:
        def encode_and_store(index: int) -> None:
            parameters = image_parameters(params, index)
            data = encode(images[index], params.output_format, parameters, png=self.png)
            self.results.put(job_id, index, data, params.output_format)

        # Images are written before the job is marked succeeded, so every listed URL resolves.
        if len(images) == 1:  # nothing to encode beside it: no hop to the pool and back
            encode_and_store(0)
            return
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
