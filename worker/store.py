"""The worker's side of the job record: start, report progress, finish."""

from __future__ import annotations

from redis import Redis

from common import jobstore, keys, workers
from common.contract import JobStatus, ModelInfo, Timings
from common.jobstore import JobRecord


class WorkerJobStore:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._start = redis.register_script(jobstore.START)
        self._progress = redis.register_script(jobstore.PROGRESS)
        self._finish = redis.register_script(jobstore.FINISH)
        self._beat = redis.register_script(workers.BEAT)

    def start(self, job_id: str) -> str:
        """Mark the job running; returns 'running', or the state that forbids starting it."""
        return str(self._start(keys=keys.script_keys(job_id), args=[jobstore.EVENTS_MAXLEN]))

    def get(self, job_id: str) -> JobRecord | None:
        fields: dict[str, str] = self.redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return jobstore.decode_record(job_id, fields) if fields else None

    def progress(self, job_id: str, step: int, total: int) -> bool:
        """Publish progress; returns True when the client asked to cancel the job."""
        flag = self._progress(
            keys=keys.script_keys(job_id), args=[jobstore.EVENTS_MAXLEN, step, total]
        )
        return bool(flag)

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        timings: Timings,
        image_count: int | None = None,
        error: str | None = None,
    ) -> None:
        args = jobstore.finish_args(
            status, self.ttl_s, timings=timings, image_count=image_count, error=error
        )
        self._finish(keys=keys.script_keys(job_id), args=args)

    def publish_model(self, info: ModelInfo) -> None:
        self.redis.set(keys.MODEL_INFO, info.model_dump_json())

    def heartbeat(self, name: str, ttl_s: int) -> None:
        self._beat(keys=[keys.WORKERS], args=[name, ttl_s])

    def retire(self, name: str) -> None:
        self.redis.zrem(keys.WORKERS, name)
