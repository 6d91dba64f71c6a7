"""The worker's side of the job record: start, report progress, finish."""

from __future__ import annotations

from redis import Redis

from common import jobstore, keys
from common.contract import JobStatus, Timings
from common.jobstore import JobRecord, Outcome


class WorkerJobStore:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.transitions = jobstore.Transitions(ttl_s)
        self._start = redis.register_script(jobstore.START)
        self._progress = redis.register_script(jobstore.PROGRESS)
        self._finish = redis.register_script(jobstore.FINISH)

    def start(self, job_id: str) -> Outcome:
        """Mark the job running; returns Outcome.running, or the state that forbids starting it
        (a final one, or Outcome.missing)."""
        call = self.transitions.start(job_id)
        return jobstore.decode_outcome(self._start(keys=call.keys, args=call.args))

    def get(self, job_id: str) -> JobRecord | None:
        fields: dict[str, str] = self.redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return jobstore.decode_record(job_id, fields) if fields else None

    def progress(self, job_id: str, step: int, total: int) -> bool:
        """Publish progress; returns True when the client asked to cancel the job."""
        call = self.transitions.progress(job_id, step, total)
        return jobstore.decode_cancel_flag(self._progress(keys=call.keys, args=call.args))

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
