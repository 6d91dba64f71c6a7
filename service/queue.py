"""Putting jobs on their model's RQ queue. RQ is synchronous: callers run these in a thread."""

from __future__ import annotations

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RqStatus

from common import keys
from common.contract import GENERATE_TASK


class JobQueue:
    def __init__(self, redis: Redis, *, job_timeout_s: int, ttl_s: int):
        self.redis = redis
        self.job_timeout_s = job_timeout_s
        self.ttl_s = ttl_s
        self._queues: dict[str, Queue] = {}

    def _queue(self, model: str) -> Queue:
        queue = self._queues.get(model)
        if queue is None:
            queue = Queue(keys.queue_name(model), connection=self.redis)
            # RQ asks the server's version on its first enqueue; asked here, once per model,
            # so that `enqueue_commands` does no I/O and may run on the event loop.
            queue.get_redis_server_version()
            self._queues[model] = queue
        return queue

    def prepared(self, model: str) -> bool:
        """Whether `enqueue_commands` for `model` is free of I/O (else call it in a thread)."""
        return model in self._queues

    def enqueue_commands(self, job_id: str, model: str) -> list[bytes]:
        """RQ's own commands that enqueue the job, recorded on a pipeline that is never sent,
        flattened for service.admission.SUBMIT: each command's length, then its arguments."""
        queue = self._queue(model)
        recorder = self.redis.pipeline(transaction=False)
        queue.enqueue_job(self._job(queue, job_id), pipeline=recorder)
        encoder = self.redis.get_encoder()
        flat: list[bytes] = []
        for args, _ in recorder.command_stack:
            flat.append(str(len(args)).encode())
            flat.extend(encoder.encode(arg) for arg in args)  # type: ignore[no-untyped-call]
        recorder.reset()
        return flat

    def enqueue(self, job_id: str, model: str) -> None:
        """Enqueue at once, without admission's gates (tests, and jobs already admitted)."""
        queue = self._queue(model)
        queue.enqueue_job(self._job(queue, job_id))

    def _job(self, queue: Queue, job_id: str) -> Job:
        return queue.create_job(
            GENERATE_TASK,
            args=(job_id,),
            job_id=job_id,
            timeout=self.job_timeout_s,
            result_ttl=self.ttl_s,
            failure_ttl=self.ttl_s,
            # No RQ retry: the task reports its own errors, and a job whose worker is lost is
            # re-queued by the workers' reaper (common.jobstore.REQUEUE), the one path that
            # re-runs a job, counting its attempts against the retries its record allows.
        )

    def depth(self, model: str) -> int:
        return self._queue(model).count

    def position(self, job_id: str, model: str) -> int | None:
        return self._queue(model).get_job_position(job_id)

    def remove(self, job_id: str, model: str) -> None:
        self._queue(model).remove(job_id)

    def worker_lost(self, job_id: str) -> bool:
        """True when RQ itself failed the job: its task raised past the runner, or RQ found
        it abandoned before any reaper did (no worker of the model alive for that long)."""
        try:
            status = Job.fetch(job_id, connection=self.redis).get_status()
        except NoSuchJobError:
            return False
        return status in (RqStatus.FAILED, RqStatus.STOPPED)
