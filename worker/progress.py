"""Progress reports and cancel checks, taken off the denoising thread.

A denoising step only notes its job's step in memory (`step`) and reads its job's local flag
(`steer`); neither touches Redis. One thread per worker process, the reporter, does the Redis
work: every `interval_s` while any job is tracked, one round trip (pipelined) carries, for each
tracked job (one alone, or every job of a batch),
- PROGRESS with the job's latest step not yet written, if it has one: steps in between are
  coalesced, only the latest is written;
- else STEER, PROGRESS's answer without its write (a cheap read of the record).
Each reply, a Steer, becomes the job's flag. So the reporter is the subscriber that keeps the
flags current: a cancel requested during a step that takes seconds reaches the flag within an
interval, with no further step needed to ask. It polls rather than subscribes, because polling
needs nothing added to what CANCEL writes, and a subscriber would have to read the flags anyway
after each reconnection to learn what it missed while away; one round trip per interval for
all the jobs together costs Redis next to nothing.

A job's last step is written at once, not at the next interval: the reporter writes it while
the pipeline decodes the latents, so that the round trip is off the job's path to its final
state. `untrack` writes the job's pending step on the caller's thread, if the reporter has not,
before forgetting the job, and holds the lock the reporter holds over its own round trips: so
the job's last progress event lands before the caller writes its final state, and no write of
the job follows.

A Redis outage costs the denoising thread nothing. A failed round trip is reported to the
process's Outage, its steps are kept (unless newer ones came meanwhile) and retried at the next
interval; `untrack` tries its write once, since the job's final state, which the caller writes
next, waits for Redis anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from common import jobstore
from common.jobstore import Steer
from worker.recovery import REDIS_DOWN, Outage
from worker.store import WorkerJobStore

log = logging.getLogger(__name__)

Step = tuple[int, int]  # (steps done, total)


@dataclass
class _Job:
    pending: Step | None = None  # the latest step not yet written
    steer: Steer = Steer.go  # what Redis last answered for the job


class ProgressReporter:
    """Writes the progress of the jobs running in this process, and keeps their cancel flags."""

    def __init__(self, store: WorkerJobStore, outage: Outage, *, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.store = store
        self.outage = outage
        self.interval_s = interval_s
        self._jobs: dict[str, _Job] = {}
        # Guards _jobs; held for a few dictionary operations only, never over a round trip, so
        # that step() and steer() cannot wait on Redis.
        self._lock = threading.Lock()
        # Held over each round trip, so that a job's writes land in the order of its steps.
        self._writing = threading.Lock()
        self._stopping = threading.Event()
        # Set to write before the interval is up: a job's last step, or stop().
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the progress reporter is already started")
        self._stopping.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; steps still pending are not written (untrack each job for that)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def track(self, job_ids: Iterable[str]) -> None:
        """The jobs have started running here: report their steps, watch their flags."""
        with self._lock:
            for job_id in job_ids:
                self._jobs[job_id] = _Job()

    def step(self, job_id: str, step: int, total: int) -> None:
        """Note the job's progress, for the reporter to write, at once if it is the last step;
        a job not tracked is ignored (a batch may still step a job it has dropped)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            job.pending = (step, total)
        if step >= total:
            self._wake.set()

    def steer(self, job_id: str) -> Steer:
        """What to do with the job, as Redis last answered: go on, cancel it, or leave it (also
        the answer for a job not tracked, which is not this worker's to run)."""
        with self._lock:
            job = self._jobs.get(job_id)
            return Steer.leave if job is None else job.steer

    def untrack(self, job_id: str) -> Steer:
        """Write the job's pending step, then forget the job; returns its last Steer, so that a
        cancel seen only by this last write can still make the job finish canceled."""
        with self._writing:
            with self._lock:
                job = self._jobs.pop(job_id, None)
            if job is None:
                return Steer.leave
            if job.pending is None:
                return job.steer
            try:
                (steer,) = self._send([(job_id, job.pending)])
            except REDIS_DOWN as exc:
                self.outage.failed(exc)
                return job.steer
            self.outage.ok()
            return steer

    def flush(self) -> None:
        """One round trip for every tracked job: its pending step, or a read of its flag."""
        with self._writing:
            with self._lock:
                batch = [(job_id, job.pending) for job_id, job in self._jobs.items()]
                for tracked in self._jobs.values():
                    tracked.pending = None
            if not batch:
                return
            try:
                steers = self._send(batch)
            except REDIS_DOWN as exc:
                self.outage.failed(exc)
                with self._lock:
                    for job_id, pending in batch:
                        # Kept for the next try, unless a newer step came meanwhile.
                        if (
                            failed := self._jobs.get(job_id)
                        ) is not None and failed.pending is None:
                            failed.pending = pending
                return
            self.outage.ok()
            with self._lock:
                for (job_id, _), steer in zip(batch, steers, strict=True):
                    if (answered := self._jobs.get(job_id)) is not None:
                        answered.steer = steer

    def _send(self, batch: list[tuple[str, Step | None]]) -> list[Steer]:
        store = self.store
        if len(batch) == 1:  # one EVALSHA; a pipeline would first ask whether its scripts exist
            return [jobstore.decode_steer(store.ask(*batch[0]))]
        with store.redis.pipeline(transaction=False) as pipe:
            for job_id, pending in batch:
                store.ask(job_id, pending, pipe)
            return [jobstore.decode_steer(reply) for reply in pipe.execute()]

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.flush()
            except Exception:  # a bug must not end the thread that keeps every cancel flag
                log.exception("writing progress failed; trying again at the next interval")
