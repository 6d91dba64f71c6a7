"""The job record in Redis and its state transitions.

Every transition is one Lua script, so a cancel racing a worker's start, or two finishes racing
each other, always leaves one consistent state, and every state change lands in the job's event
stream in the order it happened. Timestamps come from Redis' clock, so queue wait is measured on
one clock even when the API and the workers run on different machines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from pydantic import BaseModel

from common.contract import GenerateParams, JobStatus, Progress, Timings

EVENTS_MAXLEN = 1000  # more than one event per step of the longest job

_LUA_PRELUDE = """
local function now()
  local t = redis.call('TIME')
  return string.format('%d.%06d', t[1], t[2])
end
local function emit(kind, payload)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'type', kind,
             'data', cjson.encode(payload))
end
local function is_terminal(s)
  return s == 'succeeded' or s == 'failed' or s == 'canceled'
end
local function finish(status, fields, ttl)
  redis.call('HSET', KEYS[1], 'status', status, 'finished_at', now())
  local payload = {status = status}
  for k, v in pairs(fields) do
    redis.call('HSET', KEYS[1], k, v)
    if k == 'error' then payload.error = v end
  end
  emit('status', payload)
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
"""

# KEYS: job, events. ARGV: maxlen, params json, ttl.
CREATE = (
    _LUA_PRELUDE
    + """
redis.call('HSET', KEYS[1], 'status', 'queued', 'params', ARGV[2], 'created_at', now())
emit('status', {status = 'queued'})
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 'queued'
"""
)

# A job found 'running' is a retry after its worker died, so it may start again.
# KEYS: job, events. ARGV: maxlen.
START = (
    _LUA_PRELUDE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s ~= 'queued' and s ~= 'running' then return s end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', now())
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
emit('status', {status = 'running'})
return 'running'
"""
)

# Returns whether a cancel was requested, so one round trip per step does both.
# KEYS: job, events. ARGV: maxlen, step, total.
PROGRESS = (
    _LUA_PRELUDE
    + """
redis.call('HSET', KEYS[1], 'step', ARGV[2], 'total', ARGV[3])
emit('progress', {step = tonumber(ARGV[2]), total = tonumber(ARGV[3])})
return redis.call('HGET', KEYS[1], 'cancel_requested') or ''
"""
)

# KEYS: job, events. ARGV: maxlen, status, fields json, ttl.
FINISH = (
    _LUA_PRELUDE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if is_terminal(s) then return s end
finish(ARGV[2], cjson.decode(ARGV[3]), ARGV[4])
return ARGV[2]
"""
)

# A queued job is canceled at once; a running one is flagged and stops at its next step.
# KEYS: job, events. ARGV: maxlen, ttl.
CANCEL = (
    _LUA_PRELUDE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return 'missing' end
if s == 'queued' then
  finish('canceled', {error = 'canceled by the client before it started'}, ARGV[2])
  return 'canceled'
end
if s == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return 'cancel_requested'
end
return s
"""
)


def create_args(params: GenerateParams, ttl_s: int) -> list[str | int]:
    return [EVENTS_MAXLEN, params.model_dump_json(), ttl_s]


def finish_args(
    status: JobStatus,
    ttl_s: int,
    *,
    timings: Timings | None = None,
    image_count: int | None = None,
    error: str | None = None,
) -> list[str | int]:
    fields: dict[str, str] = {}
    if timings is not None:
        fields["timings"] = timings.model_dump_json()
    if image_count is not None:
        fields["image_count"] = str(image_count)
    if error is not None:
        fields["error"] = error
    return [EVENTS_MAXLEN, status.value, json.dumps(fields), ttl_s]


class JobRecord(BaseModel):
    """A job as stored, decoded from its Redis hash."""

    id: str
    status: JobStatus
    params: GenerateParams
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress | None = None
    timings: Timings
    image_count: int = 0
    error: str | None = None
    cancel_requested: bool = False
    attempts: int = 0


def decode_record(job_id: str, fields: Mapping[str, str]) -> JobRecord:
    """Build a JobRecord from the hash's fields (a client with decode_responses=True)."""

    def number(name: str) -> float | None:
        value = fields.get(name)
        return float(value) if value else None

    progress = None
    if fields.get("total"):
        progress = Progress(step=int(fields["step"]), total=int(fields["total"]))
    timings = Timings.model_validate_json(fields["timings"]) if "timings" in fields else Timings()
    created_at = float(fields["created_at"])
    started_at = number("started_at")
    finished_at = number("finished_at")
    # Queue wait and total come from Redis' clock; the worker measures the phases in between.
    if started_at is not None:
        timings.queue_wait = round(started_at - created_at, 6)
    if finished_at is not None:
        timings.total = round(finished_at - created_at, 6)
    return JobRecord(
        id=job_id,
        status=JobStatus(fields["status"]),
        params=GenerateParams.model_validate_json(fields["params"]),
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        progress=progress,
        timings=timings,
        image_count=int(fields.get("image_count", 0)),
        error=fields.get("error"),
        cancel_requested=fields.get("cancel_requested") == "1",
        attempts=int(fields.get("attempts", 0)),
    )


def decode_event(fields: Mapping[str, str]) -> tuple[str, dict[str, object]]:
    """One stream entry: its type ('status' or 'progress') and its payload."""
    return fields["type"], json.loads(fields["data"])
