"""Admitting a job in one round trip: the model, the limits, the idempotency key, the record and
the enqueue.

Checking the queue's length and then enqueueing took two steps, so concurrent submissions all
saw room and a bound of 100 admitted 126. SUBMIT is one Lua script: it checks the model's queue
bound, the submitting key's own cap and the idempotency key, and only then creates the record
(the same Lua as CREATE) and runs RQ's own enqueue commands. Those are recorded from RQ's
enqueue on a pipeline that is never sent, so RQ stays the author of its data: the script only
decides whether they run.

The model's record is checked there too: the API validates a job against the record it has
cached (service.registry), and SUBMIT admits the job only if Redis still holds that very record,
so a cache that missed a change costs one more round trip, never a job validated against stale
limits. POST /v1/generate makes this one round trip, and no other.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum

from common import jobstore, keys
from service.rq_recording import RecordedCommands

# Long enough for any client's retries of one request; Stripe and the IETF draft use 24 h.
IDEMPOTENCY_TTL_S = 24 * 3600
# Printable ASCII, as the IETF draft's examples (UUIDs, ULIDs) and every SDK's generated keys.
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class Admitted(StrEnum):
    """SUBMIT's verdict; each refusal comes with a number for the error message."""

    created = "created"
    # The idempotency key named an earlier job with the same body: that job is the answer.
    replayed = "replayed"
    # The idempotency key was used with another body.
    key_reused = "key_reused"
    queue_full = "queue_full"
    owner_full = "owner_full"
    # The model's record is not the one the job was validated against: read it again, retry.
    stale_model = "stale_model"


def _lua_constants() -> str:
    for verdict in Admitted:
        if not re.fullmatch(r"[a-z_]+", verdict):
            raise ValueError(f"verdict {verdict!r} is not a plain lower-case name")
    return "".join(f'local {v.name.upper()} = "{v.value}"\n' for v in Admitted)


# KEYS: record, events, RQ queue list, idempotency key or "", owner's queued set or "",
# keys.MODELS.
# ARGV: CREATE's ARGV (maxlen, params, ttl, fields json), then `sizes` and `data`, packed as
# service.rq_recording.RecordedCommands packs commands: first, as one group, the gate values
# (max queued, owner cap, idempotency ttl, body fingerprint, job id, model name, its record
# as validated against ('': unchecked), the number of known models the choice assumed ('0':
# any)), then RQ's commands. Packed, not an argument each: redis-py encodes and frames each
# argument in Python, about 5,000 instructions apiece (counted under callgrind).
# Returns {verdict, job id or count}; "created" adds the record's creation time (the rest of the
# record is the caller's own: common.jobstore.created_record), "replayed" the record's HGETALL.
SUBMIT = (
    jobstore.CREATE_FUNCTIONS
    + _lua_constants()
    + """
-- One C call: a Lua loop over the numbers took a fifth of the script's time in Redis.
local sizes = cjson.decode('[' .. ARGV[5] .. ']')
local at = 1
-- The values of the group whose count is sizes[i], and the index of the next group's count.
local function group(i)
  local values = {}
  for j = 1, sizes[i] do
    values[j] = string.sub(ARGV[6], at, at + sizes[i + j] - 1)
    at = at + sizes[i + j]
  end
  return values, i + sizes[i] + 1
end
local gate, next_group = group(1)
local max_queued, owner_cap, idempotency_ttl = gate[1], gate[2], gate[3]
local fingerprint, job_id, model, record, known = gate[4], gate[5], gate[6], gate[7], gate[8]
if KEYS[4] ~= '' then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local earlier, seen_fingerprint = string.match(seen, '^([^|]*)|(.*)$')
    if seen_fingerprint ~= fingerprint then return {KEY_REUSED, earlier} end
    return {REPLAYED, earlier, redis.call('HGETALL', jobstore_key(earlier))}
  end
end
if record ~= '' and (redis.call('HGET', KEYS[6], model) ~= record
  or (known ~= '0' and redis.call('HLEN', KEYS[6]) ~= tonumber(known))) then
  return {STALE_MODEL, model}
end
local depth = redis.call('LLEN', KEYS[3])
if depth >= tonumber(max_queued) then return {QUEUE_FULL, tostring(depth)} end
if KEYS[5] ~= '' then
  -- The set keeps ids of jobs once queued; those that have left the queue are pruned here,
  -- so no transition elsewhere has to know about it, at a cost bounded by the cap.
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[5])) do
    if redis.call('HGET', jobstore_key(id), 'status') ~= QUEUED then
      redis.call('SREM', KEYS[5], id)
    end
  end
  local mine = redis.call('SCARD', KEYS[5])
  if mine >= tonumber(owner_cap) then return {OWNER_FULL, tostring(mine)} end
  redis.call('SADD', KEYS[5], job_id)
  redis.call('EXPIRE', KEYS[5], ARGV[3])
end
local created_at = create_job()
if KEYS[4] ~= '' then
  redis.call('SET', KEYS[4], job_id .. '|' .. fingerprint, 'EX', idempotency_ttl)
end
-- RQ's commands, a group each.
while next_group <= #sizes do
  local command
  command, next_group = group(next_group)
  redis.call(unpack(command))
end
return {CREATED, job_id, created_at}
"""
)


def fingerprint(body: object) -> str:
    """A digest of the request as the client sent it, canonical JSON, to tell a replay of it
    from another request that reuses its idempotency key."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def idempotency_key(owner: str | None, key: str) -> str:
    """The Redis key of an Idempotency-Key: scoped per API key, hashed so any header is safe."""
    return keys.idempotency(owner or "", hashlib.sha256(key.encode()).hexdigest())


@dataclass(frozen=True)
class ModelCheck:
    """What a job was validated against: its model's record as the API read it (the JSON in
    keys.MODELS) and, for a job sent to the only known model, how many were known then (1);
    0 when the choice does not depend on the other models."""

    record: str
    known: int = 0


@dataclass(frozen=True)
class Limits:
    max_queued: int
    owner_cap: int


def submit_call(
    create: jobstore.ScriptCall,
    *,
    job_id: str,
    model: str,
    check: ModelCheck | None = None,
    limits: Limits,
    owner: str | None,
    idempotency: tuple[str, str] | None,
    enqueue: RecordedCommands,
) -> jobstore.ScriptCall:
    """SUBMIT's KEYS and ARGV: CREATE's call for the job, the gates, then RQ's commands.

    `idempotency` is (the client's key, the body's fingerprint); `enqueue` is
    `JobQueue.enqueue_commands`' recording; `check`, what the job was validated against (None:
    admit it whatever the model's record, for callers that validated against none).
    """
    idem_key, body = ("", "") if idempotency is None else idempotency
    gates = [
        str(value).encode()
        for value in (
            limits.max_queued,
            limits.owner_cap,
            IDEMPOTENCY_TTL_S,
            body,
            job_id,
            model,
            "" if check is None else check.record,
            0 if check is None else check.known,
        )
    ]
    packed = enqueue.preceded_by(gates)
    return jobstore.ScriptCall(
        [
            *create.keys,
            keys.rq_queue(model),
            idempotency_key(owner, idem_key) if idempotency else "",
            keys.owner_queued(owner) if owner else "",
            keys.MODELS,
        ],
        [*create.args, packed.sizes, packed.data],
    )


@dataclass(frozen=True)
class Verdict:
    admitted: Admitted
    detail: str
    # The earlier job's record, when replayed (None: it has expired since).
    record: jobstore.JobRecord | None = None
    # When created: the time it was, Redis' clock.
    created_at: float | None = None


def decode_verdict(reply: list[object]) -> Verdict:
    admitted = Admitted(str(reply[0]))
    detail = str(reply[1])
    if admitted is Admitted.created:
        return Verdict(admitted, detail, created_at=float(str(reply[2])))
    record = None
    if len(reply) > 2 and reply[2]:
        flat = [str(item) for item in reply[2]]  # type: ignore[attr-defined]
        record = jobstore.decode_record(detail, dict(zip(flat[::2], flat[1::2], strict=True)))
    return Verdict(admitted, detail, record)
