"""Worker heartbeats: who is warm, judged on Redis' clock so hosts' clocks never matter.

One sorted set holds every warm worker, scored by when its heartbeat lapses, so counting the
live ones is one ZCOUNT however many keys the job records add to the database.
"""

from __future__ import annotations

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: workers. ARGV: name, ttl seconds.
BEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return 1
"""
)

# KEYS: workers.
LIVE = (
    _NOW
    + """
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
"""
)
