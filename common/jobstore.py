"""The job record in Redis and its state transitions.

Every transition is one Lua script, so a cancel racing a worker's start, or two finishes racing
each other, always leaves one consistent state, and every state change lands in the job's event
stream in the order it happened. Timestamps come from Redis' clock, so queue wait is measured on
one clock even when the API and the workers run on different machines.

The scripts name states only through constants generated from `JobStatus`, and `Transitions`
builds every script's KEYS and ARGV, so the API's async store and the worker's sync store only
execute: neither can spell a state, a key or an argument differently from the other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import NamedTuple

from pydantic import BaseModel

from common import keys
from common.contract import GenerateParams, JobStatus, Progress, Timings

EVENTS_MAXLEN = 1000  # more than one event per step of the longest job


class Outcome(StrEnum):
    """What a transition script reports: the state the job is in after it, or why it has none.

    The values are the state names themselves, so `outcome == "canceled"` holds; to compare with
    a JobStatus, use `.status` (mypy rejects `==` between two enums as always false).
    """

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"
    # A running job was flagged; its worker sees the flag at its next step.
    cancel_requested = "cancel_requested"
    # No such job: never created, or expired.
    missing = "missing"

    @property
    def status(self) -> JobStatus | None:
        """The job's state after the transition; None when there is no job."""
        if self is Outcome.missing:
            return None
        if self is Outcome.cancel_requested:
            return JobStatus.running
        return JobStatus(self.value)


if _unmirrored := {s.value for s in JobStatus} - {o.value for o in Outcome}:
    # A state added to JobStatus must be one a script can report.
    raise RuntimeError(f"Outcome lacks the job states {sorted(_unmirrored)}")


def _lua_constants() -> str:
    """`local RUNNING = "running"` for every outcome, and TERMINAL, the set of final states."""
    for value in Outcome:
        # Spliced into Lua source: keep to characters that need no escaping.
        if not re.fullmatch(r"[a-z_]+", value):
            raise ValueError(f"outcome {value!r} is not a plain lower-case name")
    lines = [f'local {o.name.upper()} = "{o.value}"' for o in Outcome]
    terminal = ", ".join(f'["{s.value}"] = true' for s in JobStatus if s.terminal)
    lines.append(f"local TERMINAL = {{{terminal}}}")
    return "\n".join(lines) + "\n"


_PRELUDE = (
    _lua_constants()
    + """
local function now()
  local t = redis.call('TIME')
  return string.format('%d.%06d', t[1], t[2])
end
local function emit(kind, payload)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'type', kind,
             'data', cjson.encode(payload))
end
local function is_terminal(s)
  return TERMINAL[s] == true
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
)

# Every script: KEYS = keys.script_keys(job_id) (the record, its events); ARGV[1] = EVENTS_MAXLEN.

# ARGV: maxlen, params json, ttl.
CREATE = (
    _PRELUDE
    + """
redis.call('HSET', KEYS[1], 'status', QUEUED, 'params', ARGV[2], 'created_at', now())
emit('status', {status = QUEUED})
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return QUEUED
"""
)

# A job found running is a retry after its worker died, so it may start again.
# ARGV: maxlen.
START = (
    _PRELUDE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return MISSING end
if s ~= QUEUED and s ~= RUNNING then return s end
redis.call('HSET', KEYS[1], 'status', RUNNING, 'started_at', now())
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
emit('status', {status = RUNNING})
return RUNNING
"""
)

# Returns whether the worker should stop (a cancel was requested, so one round trip per step
# does both, or the job is no longer running: expired, or finished by the API after it took
# the worker for dead). Such a job gets no write: no keyless hash, no event after its last.
# ARGV: maxlen, step, total.
PROGRESS = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'status') ~= RUNNING then return '1' end
redis.call('HSET', KEYS[1], 'step', ARGV[2], 'total', ARGV[3])
emit('progress', {step = tonumber(ARGV[2]), total = tonumber(ARGV[3])})
return redis.call('HGET', KEYS[1], 'cancel_requested') or ''
"""
)

# The first finish wins; a later one gets the state the job ended in.
# ARGV: maxlen, status, fields json, ttl.
FINISH = (
    _PRELUDE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return MISSING end
if is_terminal(s) then return s end
finish(ARGV[2], cjson.decode(ARGV[3]), ARGV[4])
return ARGV[2]
"""
)

# A queued job is canceled at once; a running one is flagged and stops at its next step.
# ARGV: maxlen, ttl.
CANCEL = (
    _PRELUDE
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return MISSING end
if s == QUEUED then
  finish(CANCELED, {error = 'canceled by the client before it started'}, ARGV[2])
  return CANCELED
end
if s == RUNNING then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  return CANCEL_REQUESTED
end
return s
"""
)


class ScriptCall(NamedTuple):
    """What to pass a registered script: `script(keys=call.keys, args=call.args)`."""

    keys: list[str]
    args: list[str | int]


class Transitions:
    """KEYS and ARGV of every transition script, for one retention time of job records."""

    def __init__(self, ttl_s: int) -> None:
        if ttl_s < 1:
            # EXPIRE with 0 or less would delete the job the moment it is created or finished.
            raise ValueError(f"ttl_s must be at least 1 second, got {ttl_s}")
        self.ttl_s = ttl_s

    def create(self, job_id: str, params: GenerateParams) -> ScriptCall:
        return self._call(job_id, params.model_dump_json(), self.ttl_s)

    def start(self, job_id: str) -> ScriptCall:
        return self._call(job_id)

    def progress(self, job_id: str, step: int, total: int) -> ScriptCall:
        return self._call(job_id, step, total)

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        timings: Timings | None = None,
        image_count: int | None = None,
        error: str | None = None,
    ) -> ScriptCall:
        if not status.terminal:
            raise ValueError(f"a job can only finish in a final state, not {status}")
        fields: dict[str, str] = {}
        if timings is not None:
            fields["timings"] = timings.model_dump_json()
        if image_count is not None:
            fields["image_count"] = str(image_count)
        if error is not None:
            fields["error"] = error
        return self._call(job_id, status.value, json.dumps(fields), self.ttl_s)

    def cancel(self, job_id: str) -> ScriptCall:
        return self._call(job_id, self.ttl_s)

    @staticmethod
    def _call(job_id: str, *args: str | int) -> ScriptCall:
        return ScriptCall(keys.script_keys(job_id), [EVENTS_MAXLEN, *args])


def decode_outcome(reply: object) -> Outcome:
    """A transition script's reply (str, or bytes from a client without decode_responses)."""
    return Outcome(reply.decode() if isinstance(reply, bytes) else str(reply))


def decode_cancel_flag(reply: object) -> bool:
    """PROGRESS's reply: the record's cancel_requested field ('1'), or '' when it has none."""
    return bool(reply)


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
