"""The API's side of Redis: job records, event streams, model info and worker heartbeats."""

from __future__ import annotations

from redis.asyncio import Redis

from common import jobstore, keys, workers
from common.contract import GenerateParams, JobStatus, ModelInfo
from common.jobstore import JobRecord

# A blocking read must return well inside the client's socket timeout (redis-py: 5 s).
MAX_BLOCK_MS = 2000

EventEntry = tuple[str, str, dict[str, object]]
"""(stream entry id, event type, payload)"""


class ApiJobStore:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._create = redis.register_script(jobstore.CREATE)
        self._finish = redis.register_script(jobstore.FINISH)
        self._cancel = redis.register_script(jobstore.CANCEL)
        self._live = redis.register_script(workers.LIVE)

    async def create(self, job_id: str, params: GenerateParams) -> None:
        await self._create(
            keys=keys.script_keys(job_id), args=jobstore.create_args(params, self.ttl_s)
        )

    async def get(self, job_id: str) -> JobRecord | None:
        fields: dict[str, str] = await self.redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return jobstore.decode_record(job_id, fields) if fields else None

    async def fail(self, job_id: str, error: str) -> None:
        args = jobstore.finish_args(JobStatus.failed, self.ttl_s, error=error)
        await self._finish(keys=keys.script_keys(job_id), args=args)

    async def cancel(self, job_id: str) -> str:
        """'canceled', 'cancel_requested', 'missing', or the terminal state the job is in."""
        return str(
            await self._cancel(
                keys=keys.script_keys(job_id), args=[jobstore.EVENTS_MAXLEN, self.ttl_s]
            )
        )

    async def events(self, job_id: str, after: str, block_ms: int) -> list[EventEntry]:
        """Events after entry `after` ('0' for all), waiting up to `block_ms` for the first."""
        block_ms = max(1, min(block_ms, MAX_BLOCK_MS))
        stream = keys.events(job_id)
        reply: list[tuple[str, list[tuple[str, dict[str, str]]]]] | None
        reply = await self.redis.xread({stream: after}, block=block_ms, count=200)  # type: ignore[assignment]
        entries: list[EventEntry] = []
        for _, items in reply or []:
            for entry_id, fields in items:
                kind, payload = jobstore.decode_event(fields)
                entries.append((entry_id, kind, payload))
        return entries

    async def model_info(self) -> ModelInfo | None:
        raw = await self.redis.get(keys.MODEL_INFO)
        return ModelInfo.model_validate_json(raw) if raw else None

    async def live_workers(self) -> int:
        return int(await self._live(keys=[keys.WORKERS]))

    async def ping(self) -> bool:
        return bool(await self.redis.ping())
