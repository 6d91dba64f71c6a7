"""The worker's side of the job record: start, report progress, finish."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Sequence

from redis import Redis
from redis.client import Pipeline

from common import jobstore, keys
from common.contract import GenerateParams, JobStatus, Timings
from common.jobstore import Holder, JobRecord, Outcome, Started, Steer
from worker.settings import DEFAULT_SILENCE_S


def new_worker_id(name: str | None = None) -> str:
    """An id for one run of a worker process: its name (`<hostname>-<pid>` by default) and a
    random part, since a restarted container often gets its predecessor's name back."""
    return f"{name or f'{socket.gethostname()}-{os.getpid()}'}:{secrets.token_hex(4)}"


class WorkerJobStore:
    """One worker process's transitions of the jobs it runs, each marked with its worker id.

    `silence_s`: how long another worker may stay silent (no heartbeat) before START takes a
    job that worker still holds for abandoned.
    """

    def __init__(
        self,
        redis: Redis,
        ttl_s: int,
        *,
        worker: str | None = None,
        silence_s: float = DEFAULT_SILENCE_S,
    ) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.holder = Holder(worker or new_worker_id(), silence_s)
        self.transitions = jobstore.Transitions(ttl_s)
        self._start = redis.register_script(jobstore.START)
        self._take = redis.register_script(jobstore.TAKE)
        self._rq_finish = redis.register_script(jobstore.RQ_FINISH)
        self._progress = redis.register_script(jobstore.PROGRESS)
        self._steer = redis.register_script(jobstore.STEER)
        self._finish = redis.register_script(jobstore.FINISH)

    @property
    def worker(self) -> str:
        return self.holder.worker

    def start(self, job_id: str) -> Outcome:
        """Mark the job running on this worker; returns Outcome.running, or what forbids starting
        it: a final state, Outcome.missing, or Outcome.taken (another live worker runs it)."""
        return self.begin(job_id).outcome

    def begin(self, job_id: str, lookahead: int = 0) -> Started:
        """`start`, answering too, for a job it started, the job's parameters and the ids of the
        first `lookahead` jobs waiting behind it on its queue: one round trip."""
        call = self.transitions.start(job_id, self.holder, lookahead)
        return jobstore.decode_start(self._start(keys=call.keys, args=call.args))

    def begin_on(self, job_id: str, lookahead: int, pipe: Pipeline) -> None:
        """`begin`'s START, queued on `pipe` (a transaction of any client: RQ's own, say) to
        answer with its other commands; `jobstore.decode_start` reads the reply. Sent by its
        SHA-1 alone: a pipeline asked to run a Script first asks Redis whether it has it, a
        round trip of its own. A Redis that has lost it (restarted, flushed) answers NOSCRIPT
        in its place, and the caller sends `begin`, which loads it."""
        call = self.transitions.start(job_id, self.holder, lookahead)
        pipe.evalsha(self._start.sha, len(call.keys), *call.keys, *call.args)

    def params_of(self, ids: Sequence[str]) -> list[tuple[str, GenerateParams | None]]:
        """Each job with its parameters (None for a job whose record is gone)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job(job_id), "params")
            found: list[str | None] = pipe.execute()
        return [
            (job_id, None if raw is None else GenerateParams.model_validate_json(raw))
            for job_id, raw in zip(ids, found, strict=True)
        ]

    def take(self, job_ids: Sequence[str]) -> list[Outcome]:
        """Take queued jobs off their queue and start them on this worker, to run in the batch
        it is starting (one round trip): Outcome.running for each one taken."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                call = self.transitions.start(job_id, self.holder)
                self._take(keys=call.keys, args=call.args, client=pipe)
            return [jobstore.decode_outcome(reply) for reply in pipe.execute()]

    def rq_finish(self, job_id: str, status: JobStatus) -> None:
        """End RQ's record of a job this worker took into a batch, which RQ itself never ran."""
        self._rq_finish(keys=[keys.rq_job(job_id)], args=[jobstore.rq_status(status), self.ttl_s])

    def get(self, job_id: str) -> JobRecord | None:
        fields: dict[str, str] = self.redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return jobstore.decode_record(job_id, fields) if fields else None

    def ask(self, job_id: str, step: tuple[int, int] | None, client: Redis | None = None) -> object:
        """PROGRESS with `step` (steps done, total), or, with None, STEER (PROGRESS's answer
        without its write); sent on `client` when given (a pipeline: its reply comes with
        the others), else at once. `jobstore.decode_steer` reads the reply."""
        if step is None:
            call = self.transitions.steer(job_id, self.worker)
            return self._steer(keys=call.keys, args=call.args, client=client)
        call = self.transitions.progress(job_id, *step, self.worker)
        return self._progress(keys=call.keys, args=call.args, client=client)

    def report(self, job_id: str, step: int, total: int) -> Steer:
        """Publish progress; returns whether to go on, cancel, or leave the job alone."""
        return jobstore.decode_steer(self.ask(job_id, (step, total)))

    def progress(self, job_id: str, step: int, total: int) -> bool:
        """Publish progress; returns True when the worker is to stop (cancel, or leave)."""
        return self.report(job_id, step, total) is not Steer.go

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        timings: Timings,
        image_count: int | None = None,
        error: str | None = None,
    ) -> Outcome:
        """`status` if this finish won, else the state the job had already ended in (or
        Outcome.missing): the first finish of a job is the only one recorded."""
        call = self.transitions.finish(
            job_id, status, timings=timings, image_count=image_count, error=error
        )
        return jobstore.decode_outcome(self._finish(keys=call.keys, args=call.args))
