"""Putting jobs on their model's RQ queue, and reading the queues' depths and positions.

RQ is synchronous: callers run JobQueue's methods in a thread (but `enqueue_commands` once
`prepared`). QueuePositions reads RQ's lists on the API's own asyncio client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from uuid import uuid4

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue
from rq.job import Job
from rq.job import JobStatus as RqStatus

from common import keys
from common.contract import GENERATE_TASK
from service.rq_recording import (
    TEMPLATE_TRIES,
    EnqueueClock,
    EnqueueTemplate,
    RecordedCommands,
    Recording,
)

log = logging.getLogger(__name__)

# RQ's states of a job RQ itself gave up on: its task raised past the runner, or RQ found it
# abandoned before any reaper did (no worker of the model alive for that long). RQ keeps a
# job's state in the `status` field of its hash (rq.job.Job.get_status reads the same).
RQ_GAVE_UP = frozenset({RqStatus.FAILED.value, RqStatus.STOPPED.value})
RQ_STATUS_FIELD = "status"

# A queued job's position comes from the API's latest look at its model's queue, a look that
# is this old at most; each look reads the whole queue once, for every read of every job in it
# until the next, so that no read scans the queue (LPOS did, for each read of a queued job).
POSITION_MAX_AGE_S = 0.5
# A job queued after the latest look gets a new one, unless that look is younger than this:
# a burst of reads of new jobs then shares one look a while, and gets estimates meanwhile.
POSITION_MIN_AGE_S = 0.05

# A look at a queue: Redis' clock and the list, at one instant. KEYS: the RQ queue's list.
# The ids come joined in one string, which the API splits at C speed: a reply of one element
# per job took a long queue's look longer to parse than all the reads it served.
LOOK = """
return {redis.call('TIME'), table.concat(redis.call('LRANGE', KEYS[1], 0, -1), ' ')}
"""


class JobQueue:
    def __init__(self, redis: Redis, *, job_timeout_s: int, ttl_s: int):
        self.redis = redis
        self.job_timeout_s = job_timeout_s
        self.ttl_s = ttl_s
        self._queues: dict[str, Queue] = {}
        # Per model: RQ's enqueue recorded once and replayed, or None where it does not replay.
        self._templates: dict[str, EnqueueTemplate | None] = {}
        self._clock = EnqueueClock()

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
        return model in self._templates

    def enqueue_commands(self, job_id: str, model: str) -> RecordedCommands:
        """RQ's own commands that enqueue the job, as service.rq_recording replays them, for
        service.admission.SUBMIT to run."""
        if model not in self._templates:
            self._templates[model] = self._template(model)
        template = self._templates[model]
        if template is not None:
            commands = template.fill(job_id, self._clock.times())
            if commands is not None:
                return commands
        return self._record(job_id, model).commands

    def enqueue(self, job_id: str, model: str) -> None:
        """Enqueue at once, without admission's gates (tests, and jobs already admitted)."""
        queue = self._queue(model)
        queue.enqueue_job(self._job(queue, job_id))

    def _record(self, job_id: str, model: str) -> Recording:
        queue = self._queue(model)
        return Recording.record(self.redis, queue, self._job(queue, job_id))

    def _template(self, model: str) -> EnqueueTemplate | None:
        for _ in range(TEMPLATE_TRIES):
            first, second = (self._record(uuid4().hex, model) for _ in range(2))
            template = EnqueueTemplate.of(first, second)
            if template is not None:
                return template
        log.warning(
            "RQ's enqueue of a job on %s does not replay with another job's id and time; each "
            "job's is recorded afresh (slower)",
            model,
        )
        return None

    def _job(self, queue: Queue, job_id: str) -> Job:
        return queue.create_job(
            GENERATE_TASK,
            # No arguments: the task reads its job's id from RQ, so that every job's call is the
            # same and its enqueue can be replayed (service.rq_recording).
            job_id=job_id,
            timeout=self.job_timeout_s,
            result_ttl=self.ttl_s,
            failure_ttl=self.ttl_s,
            # No RQ retry: the task reports its own errors, and a job whose worker is lost is
            # re-queued by the workers' reaper (common.jobstore.REQUEUE), the one path that
            # re-runs a job, counting its attempts against the retries its record allows.
        )

    def remove(self, job_id: str, model: str) -> None:
        self._queue(model).remove(job_id)


@dataclass(frozen=True)
class _Look:
    """One model's queue as read at once: each job's index, and the time, on the API's clock
    and on Redis' (the clock of a job's `created_at`)."""

    at: float
    redis_time: float
    index: dict[str, int]


class QueuePositions:
    """Queue depths, and queued jobs' positions without a scan of the queue per read.

    A position is the job's index in RQ's list of the model's queue (0 = next) at the latest
    look, at most POSITION_MAX_AGE_S old. The list is the queue of record, so a look is exact
    whatever changed it: a job canceled or taken into a batch from the middle, a lost worker's
    job put back at the front. Between looks a position is that of the look, so it may be
    behind by what happened since; a job queued since the look is counted behind every job
    queued then (a look younger than POSITION_MIN_AGE_S is not taken again for it), and a job
    still recorded queued but no longer in the list, which a worker has taken and not yet
    started, is next: 0.
    """

    def __init__(self, redis: AsyncRedis) -> None:
        self.redis = redis
        self._looks: dict[str, _Look] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._look_script = redis.register_script(LOOK)

    async def position(self, job_id: str, model: str, created_at: float) -> int:
        look = self._looks.get(model)
        now = time.monotonic()
        if (
            look is None
            or now - look.at > POSITION_MAX_AGE_S
            or (
                job_id not in look.index
                and created_at >= look.redis_time
                and now - look.at > POSITION_MIN_AGE_S
            )
        ):
            look = await self._look(model, now)
        found = look.index.get(job_id)
        if found is not None:
            return found
        if created_at >= look.redis_time:  # queued since
            return len(look.index)
        return 0

    def forget(self, model: str) -> None:
        """Drop the latest look at the model's queue (this process changed it)."""
        self._looks.pop(model, None)

    async def _look(self, model: str, wanted_at: float) -> _Look:
        """A look at the queue taken at `wanted_at` or later: one reader at a time reads the
        list; those waiting meanwhile take its look."""
        lock = self._locks.setdefault(model, asyncio.Lock())
        async with lock:
            look = self._looks.get(model)
            if look is not None and look.at >= wanted_at:
                return look
            at = time.monotonic()
            (seconds, microseconds), joined = await self._look_script(keys=[keys.rq_queue(model)])
            ids = str(joined).split(" ") if joined else []
            # Backwards, so that an id listed twice keeps its first place.
            index = dict(zip(reversed(ids), range(len(ids) - 1, -1, -1), strict=True))
            look = _Look(at, int(seconds) + int(microseconds) / 1e6, index)
            self._looks[model] = look
            return look

    async def depths(self, models: list[str]) -> list[int]:
        """Jobs waiting in each model's queue, now."""
        if not models:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.llen(keys.rq_queue(model))
            return [int(depth) for depth in await pipe.execute()]
