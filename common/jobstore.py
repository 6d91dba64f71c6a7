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
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import NamedTuple

import pydantic_core
from pydantic import BaseModel
from rq.job import JobStatus as RqStatus

from common import keys, webhooks, workers
from common.contract import GenerateParams, JobStatus, JobWebhook, Progress, Timings

EVENTS_MAXLEN = 1000  # more than one event per step of the longest job
# The errors of jobs the reaper finishes because their worker is gone; the API's own check of RQ
# (service.service) reports the first too.
WORKER_LOST = "the worker running this job stopped before it finished, and no retry was left"
CANCELED_RUNNING = "canceled by the client while running"
# A job whose entry RQ deleted or let expire before a worker took it: no worker can run it.
RQ_LOST = "the queue no longer held this job when a worker took it, so it cannot run"


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
    # START refused: another worker, alive, is running the job.
    taken = "taken"
    # No such job: never created, or expired.
    missing = "missing"

    @property
    def status(self) -> JobStatus | None:
        """The job's state after the transition; None when there is no job."""
        if self is Outcome.missing:
            return None
        if self in (Outcome.cancel_requested, Outcome.taken):
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
    + webhooks.lua_constants()
    + webhooks.SCHEDULE_LUA
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
  local at = now()
  redis.call('HSET', KEYS[1], 'status', status, 'finished_at', at)
  local payload = {status = status}
  for k, v in pairs(fields) do
    redis.call('HSET', KEYS[1], k, v)
    if k == 'error' then payload.error = v end
  end
  emit('status', payload)
  schedule_webhook(status, at)
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
"""
)


class Steer(StrEnum):
    """PROGRESS's answer to the worker running the job: what to do after this step."""

    go = ""
    # The client asked for a cancel: stop, and finish the job canceled.
    cancel = "cancel"
    # The job is not this worker's to run any more: stop, and write nothing to it.
    leave = "leave"


class Holder(NamedTuple):
    """A worker starting jobs, for START: its id (one per run of the process, so a restarted
    worker never passes for its predecessor), and how long a worker may stay silent before it
    counts as gone, its jobs taken back."""

    worker: str
    silence_s: float


def _seconds(value: float) -> str:
    # For Lua's tonumber: a plain decimal, never an exponent.
    return f"{value:.6f}"


def _lua_string(text: str) -> str:
    # Spliced into Lua source: keep to characters that need no escaping.
    if not re.fullmatch(r"[A-Za-z0-9_.:{}-]*", text):
        raise ValueError(f"{text!r} cannot be spliced into Lua source as it is")
    return f'"{text}"'


def _lua_key_function(name: str, key: Callable[..., str], arity: int = 1) -> str:
    """`local function NAME(a1, ...) return "prefix" .. a1 .. "suffix" end`, made by calling
    `key` with placeholders, so a name built in Lua at run time is the one common.keys builds."""
    params = [f"a{i}" for i in range(1, arity + 1)]
    marks = [chr(i) for i in range(1, arity + 1)]  # control characters, in no key name
    rest = key(*marks)
    parts = []
    for mark, param in zip(marks, params, strict=True):
        literal, found, rest = rest.partition(mark)
        if not found:
            raise ValueError(f"{name}: the key leaves out an argument")
        parts += [_lua_string(literal), param]
    parts.append(_lua_string(rest))
    body = " .. ".join(part for part in parts if part != '""')
    return f"local function {name}({', '.join(params)}) return {body} end\n"


def _recovery_constants() -> str:
    for value in Steer:
        if not re.fullmatch(r"[a-z_]*", value):
            raise ValueError(f"steer {value!r} is not a plain lower-case name")
    lines = [f'local STEER_{s.name.upper()} = "{s.value}"' for s in Steer]
    prefix = keys.job("")
    if keys.job("x") != f"{prefix}x":
        raise ValueError("a job's id must end its record's key")
    lines.append(f"local JOB_ID_FROM = {len(prefix) + 1}")
    # A JSON string of plain characters is a Lua string too.
    lines.append(f"local BUSY = {json.dumps(workers.BUSY_SEPARATOR)}")
    functions = [
        _lua_key_function("running_key", keys.running),
        _lua_key_function("beats_key", keys.beats),
        _lua_key_function("busy_key", keys.busy),
        _lua_key_function("dequeued_key", keys.dequeued),
        _lua_key_function("rq_queue_key", keys.rq_queue),
        _lua_key_function("rq_dequeued_key", keys.rq_dequeued),
        _lua_key_function("rq_started_key", keys.rq_started),
        _lua_key_function("rq_job_key", keys.rq_job),
        _lua_key_function("rq_executions_key", keys.rq_executions),
        _lua_key_function("rq_execution_key", keys.rq_execution, 2),
        _lua_key_function("rq_started_member", keys.rq_started_member, 2),
    ]
    return "\n".join(lines) + "\n" + "".join(functions)


# What the scripts that take a dead worker's jobs back share: liveness judged on Redis' clock
# from each worker's latest heartbeat (common.workers.ALIVE), and RQ's records of a job's runs.
_RECOVERY = (
    _recovery_constants()
    + """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function this_job()
  return string.sub(KEYS[1], JOB_ID_FROM)
end
local function job_model()
  return cjson.decode(redis.call('HGET', KEYS[1], 'params')).model
end
-- Whether `worker` still runs this job: it beat within silence_s, and said at that beat that it
-- ran the job (alone or in a batch), or started the job so lately that no beat since need say
-- so (a beat reads what its worker runs a moment before it writes it).
local function holds(model, worker, silence_s)
  local beat = redis.call('ZSCORE', beats_key(model), worker)
  local since = clock() - silence_s
  if beat == false or tonumber(beat) <= since then return false end
  local busy = redis.call('HGET', busy_key(model), worker)
  if busy and string.find(BUSY .. busy .. BUSY, BUSY .. this_job() .. BUSY, 1, true) then
    return true
  end
  return tonumber(redis.call('HGET', KEYS[1], 'started_at') or '0') > since
end
local function held_by_another(s, worker, silence_s)
  if s ~= RUNNING then return false end
  local holder = redis.call('HGET', KEYS[1], 'worker')
  return holder ~= false and holder ~= worker and holds(job_model(), holder, silence_s)
end
-- START by `worker`: its run begins afresh, watched by the model's reapers.
local function hold(worker)
  local model, job = job_model(), this_job()
  redis.call('HSET', KEYS[1], 'worker', worker)
  redis.call('HDEL', KEYS[1], 'step', 'total')
  redis.call('SADD', running_key(model), job)
  redis.call('HDEL', dequeued_key(model), job)
end
"""
)


# Every script: KEYS = keys.script_keys(job_id) (the record, its events); ARGV[1] = EVENTS_MAXLEN.

# What creating a job writes, shared by CREATE and the API's admission script (SUBMIT), which
# creates the record in the same way once its limits admit the job.
# ARGV: maxlen, params json, ttl, the record's other fields as a JSON object (`creation_fields`).
CREATE_FUNCTIONS = (
    _PRELUDE
    + _lua_key_function("jobstore_key", keys.job)
    + """
local function create_job()
  local at = now()
  redis.call('HSET', KEYS[1], 'status', QUEUED, 'params', ARGV[2], 'created_at', at)
  for field, value in pairs(cjson.decode(ARGV[4])) do
    redis.call('HSET', KEYS[1], field, value)
  end
  emit('status', {status = QUEUED})
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  return at
end
"""
)

CREATE = (
    CREATE_FUNCTIONS
    + """
create_job()
return QUEUED
"""
)

# A job found running is a retry after its worker died, so it may start again; its webhook
# was told of `running` the first time. Given the starting worker, START refuses a job another
# live worker runs, and records the worker as the job's holder, watched by REQUEUE. A job that
# worker already holds is its own START sent again (the reply was lost, and the client or the
# worker resent it; worker ids are unique to a process): the run it began goes on, with no
# attempt, event or write more.
# START answers {outcome}, and for a job it started {running, params, the ids of the first
# `lookahead` jobs waiting on the job's queue}: what its worker needs to begin the run (and to
# look for jobs to batch with it) comes back in the same round trip.
# ARGV: maxlen[, worker id, seconds of silence after which a worker counts as gone[,
# lookahead]].
_BEGIN = """
local function begin(s, worker)
  local at = now()
  redis.call('HSET', KEYS[1], 'status', RUNNING, 'started_at', at)
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  if worker then hold(worker) end
  emit('status', {status = RUNNING})
  if s == QUEUED then schedule_webhook(RUNNING, at) end
  return RUNNING
end
"""

START = (
    _PRELUDE
    + _RECOVERY
    + _BEGIN
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return {MISSING} end
if s ~= QUEUED and s ~= RUNNING then return {s} end
local again = s == RUNNING and ARGV[2] and redis.call('HGET', KEYS[1], 'worker') == ARGV[2]
if not again then
  if ARGV[2] and held_by_another(s, ARGV[2], tonumber(ARGV[3])) then return {TAKEN} end
  begin(s, ARGV[2])
end
local params = redis.call('HGET', KEYS[1], 'params')
local lookahead = tonumber(ARGV[4] or '0')
if lookahead == 0 then return {RUNNING, params} end
local queue = rq_queue_key(cjson.decode(params).model)
return {RUNNING, params, unpack(redis.call('LRANGE', queue, 0, lookahead - 1))}
"""
)

# A worker adding a queued job to the batch it is about to run: the job leaves its RQ queue
# and starts on that worker in one step, so it is always either waiting there or held by a
# worker whose death the reapers notice. RQ never runs it; RQ's record of it stays until the
# worker finishes it (`rq_finish`), so a reaper can still put it back on the queue. A job that
# is no longer queued (canceled) is left where it is for RQ to drain; one another worker took
# off the queue first, or runs, is TAKEN. ARGV: as START's, the worker id required.
TAKE = (
    _PRELUDE
    + _RECOVERY
    + _BEGIN
    + """
local s = redis.call('HGET', KEYS[1], 'status')
if not s then return MISSING end
if s == RUNNING then return TAKEN end
if s ~= QUEUED then return s end
if redis.call('LREM', rq_queue_key(job_model()), 1, this_job()) == 0 then return TAKEN end
-- RQ never runs a taken job, so nothing of RQ's would expire its record of it should the worker
-- die between the job's end and RQ_FINISH: it lasts as long as the job's own record does.
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then redis.call('EXPIRE', rq_job_key(this_job()), ttl) end
return begin(s, ARGV[2])
"""
)

# RQ's record of a job a worker ran in a batch (TAKE), once the job has ended: RQ's status for
# it, kept as long as the job's record. KEYS: RQ's hash of the job. ARGV: RQ's status, ttl.
RQ_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# What PROGRESS and STEER answer: whether the job is no longer `worker`'s to run, and else
# whether to go on or cancel.
_STEERING = """
local function lost(worker)
  if redis.call('HGET', KEYS[1], 'status') ~= RUNNING then return true end
  return worker and redis.call('HGET', KEYS[1], 'worker') ~= worker
end
local function go_or_cancel()
  if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return STEER_CANCEL end
  return STEER_GO
end
"""

# PROGRESS returns a Steer: go on; stop and finish canceled (a cancel was requested, so one
# round trip does both); or leave the job (it is no longer running: expired, or finished by the
# API; or, given the worker, no longer that worker's: re-queued after it was taken for gone, or
# started by another since). A job left gets no write: no keyless hash, no event after its last.
# ARGV: maxlen, step, total[, worker id].
PROGRESS = (
    _PRELUDE
    + _RECOVERY
    + _STEERING
    + """
if lost(ARGV[4]) then return STEER_LEAVE end
redis.call('HSET', KEYS[1], 'step', ARGV[2], 'total', ARGV[3])
emit('progress', {step = tonumber(ARGV[2]), total = tonumber(ARGV[3])})
return go_or_cancel()
"""
)

# PROGRESS's answer without its write, for a worker between two reports of a job (a long step):
# so a cancel reaches it while the step runs. ARGV: maxlen[, worker id].
STEER = (
    _PRELUDE
    + _RECOVERY
    + _STEERING
    + """
if lost(ARGV[2]) then return STEER_LEAVE end
return go_or_cancel()
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


# The reaper's transition, for one job of a model:
# - running, and its holder silent for over silence_s (or, alive, saying it runs another job or
#   none, the Redis that knew better having lost a finish of it): back at the front, queued
#   (no progress, attempts kept), or finished: canceled if a cancel was asked for, failed once
#   the attempts have used up its retries (or RQ no longer has the job to run);
# - queued, yet taken off the queue by a worker that has not started it for over limbo_s (first
#   noted by an earlier call): back at the front, nothing else changed;
# - running on `giver`, the worker giving it back, which never ran it: as a silent holder's
#   job, that start not counted as an attempt;
# - anything else: left as it is, and dropped from the model's sets of jobs to watch.
# Returns the job's state if this call changed it (queued, canceled or failed), else ''.
# ARGV: maxlen, model, job id, silence_s, limbo_s, ttl, error when out of retries, error when
# canceled, RQ's status of a queued job, RQ's status of a failed one[, giver].
REQUEUE = (
    _PRELUDE
    + _RECOVERY
    + """
local model, job = ARGV[2], ARGV[3]
local silence_s, limbo_s, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local RQ_QUEUED, RQ_FAILED = ARGV[9], ARGV[10]
-- Whether RQ registered a run of the job as started.
local function rq_started_run(model, job)
  for _, e in ipairs(redis.call('ZRANGE', rq_executions_key(job), 0, -1)) do
    if redis.call('ZSCORE', rq_started_key(model), rq_started_member(job, e)) then
      return true
    end
  end
  return false
end
-- RQ's records of the job's runs go: so RQ never finds one abandoned and acts on it as well.
local function rq_forget_runs(model, job)
  local executions = rq_executions_key(job)
  for _, e in ipairs(redis.call('ZRANGE', executions, 0, -1)) do
    redis.call('ZREM', rq_started_key(model), rq_started_member(job, e))
    redis.call('DEL', rq_execution_key(job, e))
  end
  redis.call('DEL', executions)
  redis.call('LREM', rq_dequeued_key(model), 0, job)
end
-- At the front of its queue (RQ pushes to the back and pops from the front), and queued in
-- RQ's record as a job waiting there is.
local function rq_requeue(model, job)
  rq_forget_runs(model, job)
  if redis.call('EXISTS', rq_job_key(job)) == 1 then
    redis.call('HSET', rq_job_key(job), 'status', RQ_QUEUED)
  end
  local queue = rq_queue_key(model)
  redis.call('LREM', queue, 0, job)
  redis.call('LPUSH', queue, job)
end
local limbo = dequeued_key(model)
local s = redis.call('HGET', KEYS[1], 'status')
if s == RUNNING then
  redis.call('HDEL', limbo, job)
  local holder = redis.call('HGET', KEYS[1], 'worker')
  -- Given back by the worker that holds it, which never ran it (its START rode a transaction
  -- whose reply was lost): that start was no attempt.
  local unrun = ARGV[11] ~= nil and holder == ARGV[11]
  -- A job started with no holder named is RQ's alone to watch.
  if not holder or (not unrun and holds(model, holder, silence_s)) then return '' end
  if unrun then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
  redis.call('SREM', running_key(model), job)
  local rq_job = rq_job_key(job)
  local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
  local retries = tonumber(redis.call('HGET', KEYS[1], 'retries') or '0')
  if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then
    finish(CANCELED, {error = ARGV[8]}, ttl)
  elseif attempts > retries or redis.call('EXISTS', rq_job) == 0 then
    finish(FAILED, {error = ARGV[7]}, ttl)
  else
    redis.call('HSET', KEYS[1], 'status', QUEUED)
    redis.call('HDEL', KEYS[1], 'step', 'total', 'worker', 'started_at')
    emit('status', {status = QUEUED})
    rq_requeue(model, job)
    return QUEUED
  end
  rq_forget_runs(model, job)
  if redis.call('EXISTS', rq_job) == 1 then
    redis.call('HSET', rq_job, 'status', RQ_FAILED)
    redis.call('EXPIRE', rq_job, ttl)
  end
  return redis.call('HGET', KEYS[1], 'status')
end
if s == QUEUED then
  local popped = redis.call('LPOS', rq_dequeued_key(model), job) or rq_started_run(model, job)
  if not popped or redis.call('LPOS', rq_queue_key(model), job) then
    redis.call('HDEL', limbo, job)
    return ''
  end
  local t = clock()
  local seen = tonumber(redis.call('HGET', limbo, job) or t)
  if seen > t - limbo_s then
    redis.call('HSETNX', limbo, job, string.format('%.6f', t))
    return ''
  end
  redis.call('HDEL', limbo, job)
  rq_requeue(model, job)
  return QUEUED
end
redis.call('SREM', running_key(model), job)
redis.call('HDEL', limbo, job)
return ''
"""
)


OWNER_FIELD = "owner"


def creation_fields(
    *, retries: int, webhook: webhooks.WebhookConfig | None, owner: str | None
) -> bytes:
    """The record's fields besides status, params and creation time, as CREATE's JSON arg."""
    fields = {"retries": str(retries)}
    if webhook is not None:
        fields[webhooks.CONFIG_FIELD] = webhook.model_dump_json()
    if owner is not None:
        fields[OWNER_FIELD] = owner
    # pydantic-core's encoder: a fifth of json.dumps' instructions, on every POST.
    return pydantic_core.to_json(fields)


class ScriptCall(NamedTuple):
    """What to pass a registered script: `script(keys=call.keys, args=call.args)`."""

    keys: list[str]
    args: list[str | int | bytes]


class Transitions:
    """KEYS and ARGV of every transition script, for one retention time of job records."""

    def __init__(self, ttl_s: int) -> None:
        if ttl_s < 1:
            # EXPIRE with 0 or less would delete the job the moment it is created or finished.
            raise ValueError(f"ttl_s must be at least 1 second, got {ttl_s}")
        self.ttl_s = ttl_s

    def create(
        self,
        job_id: str,
        params: GenerateParams,
        webhook: webhooks.WebhookConfig | None = None,
        *,
        retries: int = 0,
        owner: str | None = None,
    ) -> ScriptCall:
        """`retries`: how many times the job may be re-run after its worker is lost; `owner`:
        the API key that submitted it."""
        return self._call(
            job_id,
            # model_dump_json's own bytes, without its wrapper's keyword handling.
            pydantic_core.to_json(params),
            self.ttl_s,
            creation_fields(retries=retries, webhook=webhook, owner=owner),
        )

    def start(self, job_id: str, holder: Holder | None = None, lookahead: int = 0) -> ScriptCall:
        """START (or TAKE, which ignores `lookahead`): by `holder` if given, answering the ids of
        the first `lookahead` jobs waiting on the job's queue (only with a holder)."""
        if holder is None:
            if lookahead:
                raise ValueError("a lookahead needs a holder")
            return self._call(job_id)
        more = [lookahead] if lookahead else []
        return self._call(job_id, holder.worker, _seconds(holder.silence_s), *more)

    def progress(self, job_id: str, step: int, total: int, worker: str | None = None) -> ScriptCall:
        return self._call(job_id, step, total, *([] if worker is None else [worker]))

    def steer(self, job_id: str, worker: str | None = None) -> ScriptCall:
        return self._call(job_id, *([] if worker is None else [worker]))

    def requeue(
        self,
        job_id: str,
        model: str,
        *,
        silence_s: float,
        limbo_s: float,
        giver: str | None = None,
    ) -> ScriptCall:
        """REQUEUE of a job of `model`: a running one whose worker has been silent longer than
        `silence_s`, a dequeued one that no worker has started for longer than `limbo_s`, or
        one the worker `giver` started but never ran."""
        return self._call(
            job_id,
            model,
            job_id,
            _seconds(silence_s),
            _seconds(limbo_s),
            self.ttl_s,
            WORKER_LOST,
            CANCELED_RUNNING,
            RqStatus.QUEUED.value,
            RqStatus.FAILED.value,
            *([] if giver is None else [giver]),
        )

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
    def _call(job_id: str, *args: str | int | bytes) -> ScriptCall:
        return ScriptCall(keys.script_keys(job_id), [EVENTS_MAXLEN, *args])


def rq_status(status: JobStatus) -> str:
    """RQ's status for a job that ended in `status` (for RQ_FINISH)."""
    if not status.terminal:
        raise ValueError(f"{status} is not a final state")
    return {
        JobStatus.succeeded: RqStatus.FINISHED,
        JobStatus.failed: RqStatus.FAILED,
        JobStatus.canceled: RqStatus.CANCELED,
    }[status].value


def decode_outcome(reply: object) -> Outcome:
    """A transition script's reply (str, or bytes from a client without decode_responses)."""
    return Outcome(reply.decode() if isinstance(reply, bytes) else str(reply))


class Started(NamedTuple):
    """START's answer: its outcome; for a job it started (and only then), the job's parameters
    and the ids waiting first on its queue (as many as the lookahead asked for)."""

    outcome: Outcome
    params: GenerateParams | None = None
    queued: tuple[str, ...] = ()


def _text(reply: object) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def decode_start(reply: object) -> Started:
    if not isinstance(reply, list) or not reply:
        raise ValueError(f"START answered {reply!r}")
    outcome, *rest = (_text(item) for item in reply)
    if not rest:
        return Started(Outcome(outcome))
    params, *queued = rest
    return Started(Outcome(outcome), GenerateParams.model_validate_json(params), tuple(queued))


def decode_steer(reply: object) -> Steer:
    """PROGRESS's reply."""
    return Steer(reply.decode() if isinstance(reply, bytes) else str(reply))


def decode_requeued(reply: object) -> Outcome | None:
    """REQUEUE's reply: what became of the job (queued: put back at the front of its queue;
    failed or canceled: finished), or None when it was left as it was."""
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    return Outcome(text) if text else None


# The record's field naming the API key that owns the job.


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
    webhook: JobWebhook | None = None
    # The name of the API key that created the job (service.auth); None when the API has none.
    owner: str | None = None


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
        webhook=webhooks.decode_webhook(fields),
        owner=fields.get(OWNER_FIELD),
    )


def created_record(
    job_id: str,
    params: GenerateParams,
    created_at: float,
    webhook: webhooks.WebhookConfig | None = None,
    *,
    owner: str | None = None,
) -> JobRecord:
    """The record CREATE writes for `Transitions.create`'s arguments, as `decode_record` reads
    it back, without reading it back: `created_at` is the time CREATE answers."""
    return JobRecord(
        id=job_id,
        status=JobStatus.queued,
        params=params,
        created_at=created_at,
        timings=Timings(),
        webhook=None if webhook is None else webhooks.job_webhook(webhook),
        owner=owner,
    )


def decode_event(fields: Mapping[str, str]) -> tuple[str, dict[str, object]]:
    """One stream entry: its type ('status' or 'progress') and its payload."""
    return fields["type"], json.loads(fields["data"])
