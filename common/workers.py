"""Model records and worker heartbeats, judged on Redis' clock so hosts' clocks never matter.

Each model has one sorted set of its warm workers, scored by when each heartbeat lapses, so
counting the live ones is one ZCOUNT however many keys the job records add to the database.
The same beat rewrites the model's record, which therefore survives a Redis restart or flush
by at most one heartbeat period.
"""

from __future__ import annotations

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


def beat_call(worker: str, ttl_s: int, info: ModelInfo) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of BEAT for `worker`, warm on the model `info` describes."""
    return (
        [keys.workers(info.id), keys.MODELS, keys.MODELS_CREATED],
        [worker, ttl_s, info.id, info.model_dump_json()],
    )
