"""The API's side of the job records and their event streams in Redis."""

from __future__ import annotations

from redis.asyncio import Redis

from common import jobstore, keys
from common.contract import GenerateParams, JobStatus
from common.jobstore import JobRecord, Outcome, ScriptCall
from common.webhooks import WebhookConfig
from service.admission import SUBMIT, Verdict, decode_verdict
from service.queue import RQ_GAVE_UP, RQ_STATUS_FIELD

# A blocking read must return well inside the client's socket timeout (redis-py: 5 s).
MAX_BLOCK_MS = 2000

# A job's record and RQ's state of it, in one command. KEYS: the record, RQ's hash of the job.
# ARGV: the field of RQ's state. A missing field is false in the reply (nil), not a hole.
READ = """
return {redis.call('HGETALL', KEYS[1]), redis.call('HGET', KEYS[2], ARGV[1])}
"""

EventEntry = tuple[str, str, dict[str, object]]
"""(stream entry id, event type, payload)"""


class ApiJobStore:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.transitions = jobstore.Transitions(ttl_s)
        self._create = redis.register_script(jobstore.CREATE)
        self._submit = redis.register_script(SUBMIT)
        self._read = redis.register_script(READ)
        self._finish = redis.register_script(jobstore.FINISH)
        self._cancel = redis.register_script(jobstore.CANCEL)

    async def create(
        self,
        job_id: str,
        params: GenerateParams,
        webhook: WebhookConfig | None = None,
        *,
        retries: int = 0,
        owner: str | None = None,
    ) -> None:
        """`retries`: re-runs the job is allowed after losing its worker; `owner`: the name of
        the API key creating it, the only one that may see it."""
        call = self.transitions.create(job_id, params, webhook, retries=retries, owner=owner)
        await self._create(keys=call.keys, args=call.args)

    async def submit(self, call: ScriptCall) -> Verdict:
        """Run service.admission.SUBMIT: admit the job (create and enqueue it) or say why not."""
        reply: list[object] = await self._submit(keys=call.keys, args=call.args)
        return decode_verdict(reply)

    async def get(self, job_id: str) -> JobRecord | None:
        fields: dict[str, str] = await self.redis.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return jobstore.decode_record(job_id, fields) if fields else None

    async def read(self, job_id: str) -> tuple[JobRecord | None, bool]:
        """The job's record, and whether RQ gave up on it (service.queue.RQ_GAVE_UP): one
        round trip for both, a finished job's or a queued one's."""
        flat, rq_status = await self._read(
            keys=[keys.job(job_id), keys.rq_job(job_id)], args=[RQ_STATUS_FIELD]
        )
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        record = jobstore.decode_record(job_id, fields) if fields else None
        return record, rq_status in RQ_GAVE_UP

    async def fail(self, job_id: str, error: str) -> Outcome:
        """Outcome.failed, or the state the job had already ended in, or Outcome.missing."""
        call = self.transitions.finish(job_id, JobStatus.failed, error=error)
        return jobstore.decode_outcome(await self._finish(keys=call.keys, args=call.args))

    async def cancel(self, job_id: str) -> Outcome:
        """canceled, cancel_requested, missing, or the final state the job is already in."""
        call = self.transitions.cancel(job_id)
        return jobstore.decode_outcome(await self._cancel(keys=call.keys, args=call.args))

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

    async def ping(self) -> bool:
        return bool(await self.redis.ping())
