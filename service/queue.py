"""Putting jobs on their model's RQ queue. RQ is synchronous: callers run these in a thread."""

from __future__ import annotations

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RqStatus

from common import keys
from common.contract import GENERATE_TASK


class JobQueue:
    def __init__(self, redis: Redis, *, job_timeout_s: int, retries: int, ttl_s: int):
        self.redis = redis
        self.job_timeout_s = job_timeout_s
        self.retries = retries
        self.ttl_s = ttl_s

    def _queue(self, model: str) -> Queue:
        return Queue(keys.queue_name(model), connection=self.redis)

    def enqueue(self, job_id: str, model: str) -> None:
        self._queue(model).enqueue_call(
            GENERATE_TASK,
            args=(job_id,),
            job_id=job_id,
            timeout=self.job_timeout_s,
            result_ttl=self.ttl_s,
            failure_ttl=self.ttl_s,
            # A retry only follows a worker that died mid-job: the task reports its own errors.
            retry=Retry(max=self.retries) if self.retries else None,
        )

    def depth(self, model: str) -> int:
        return self._queue(model).count

    def position(self, job_id: str, model: str) -> int | None:
        return self._queue(model).get_job_position(job_id)

    def remove(self, job_id: str, model: str) -> None:
        self._queue(model).remove(job_id)

    def worker_lost(self, job_id: str) -> bool:
        """True when RQ gave up on the job (its worker died and no retry is left)."""
        try:
            status = Job.fetch(job_id, connection=self.redis).get_status()
        except NoSuchJobError:
            return False
        return status in (RqStatus.FAILED, RqStatus.STOPPED)
