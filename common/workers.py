"""Model records and worker heartbeats, judged on Redis' clock so hosts' clocks never matter.

Each model has one sorted set of its warm workers, scored by when each heartbeat lapses, so
counting the live ones is one ZCOUNT however many keys the job records add to the database.
The same beat rewrites the model's record, which therefore survives a Redis restart or flush
by at most one heartbeat period.
"""

from __future__ import annotations

from collections.abc import Iterable

from common import keys
from common.contract import ModelInfo

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: the model's workers, MODELS, MODELS_CREATED. ARGV: worker, ttl seconds, model, info.
BEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('HSETNX', KEYS[3], ARGV[3], math.floor(now))
return 1
"""
)

# KEYS: any number of workers sets. Returns the live count of each, in order.
LIVE = (
    _NOW
    + """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('ZCOUNT', key, '(' .. now, '+inf')
end
return counts
"""
)


# How long a worker process silent for good stays in its model's `keys.beats`: far past any
# silence after which a worker counts as gone, so a missing entry means the same as a stale one.
FORGET_AFTER_S = 3600

# Between the ids of the jobs a worker runs together (one batch) in its `keys.busy` entry. Job
# ids are uuids, so none contains it.
BUSY_SEPARATOR = " "

# The liveness beat, run with BEAT: whatever its thread's process is busy with, the process is
# alive, and runs the jobs it names. KEYS: keys.beats(model), keys.busy(model).
# ARGV: the process's worker id, FORGET_AFTER_S, the jobs it runs, BUSY_SEPARATOR-joined ('' for
# none).
ALIVE = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local forgotten = now - tonumber(ARGV[2])
for _, worker in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', forgotten)) do
  redis.call('HDEL', KEYS[2], worker)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', forgotten)
return 1
"""
)


def alive_call(
    worker_id: str, model: str, job_ids: Iterable[str]
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of ALIVE for the process `worker_id` of `model`'s workers, running the jobs
    `job_ids` (none when idle)."""
    running = BUSY_SEPARATOR.join(job_ids)
    return [keys.beats(model), keys.busy(model)], [worker_id, FORGET_AFTER_S, running]


def beat_call(worker: str, ttl_s: int, info: ModelInfo) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of BEAT for `worker`, warm on the model `info` describes."""
    return (
        [keys.workers(info.id), keys.MODELS, keys.MODELS_CREATED],
        [worker, ttl_s, info.id, info.model_dump_json()],
    )
