"""Webhook deliveries in Redis: what a job's record holds about them, and the due set.

A transition script of common.jobstore that puts a job in a state its webhook asks for adds the
delivery to the due set, in the same script, so no state change can happen without its delivery
being owed. Any API process then claims a due delivery with CLAIM, which pushes its score past a
lease and counts the attempt: if that process dies while sending, the delivery falls due again
when the lease ends and another process sends it, under the same webhook-id. RECORD ends the
attempt: delivered, due again later, or failed.

Every name a script uses (fields, states, the due set) is spliced in from the constants here, so
the scripts and the Python that reads the record cannot spell one differently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import NamedTuple

from pydantic import BaseModel

from common import keys
from common.contract import JobStatus, JobWebhook, WebhookState

# Fields of the job hash. The per-event ones are the prefix followed by the event's name.
CONFIG_FIELD = "webhook"  # WebhookConfig JSON, written at creation
EVENT_FIELD = "webhook_event"  # the latest event owed a delivery
STATE_FIELD = "webhook_state:"
ATTEMPTS_FIELD = "webhook_attempts:"
LAST_STATUS_FIELD = "webhook_last_status:"
# Job ids are hex and event names lower-case words, so the id splits back unambiguously.
SEPARATOR = "_"


class WebhookConfig(BaseModel):
    """A job's webhook as stored: the request's, and the base URL its links are built on."""

    url: str
    events: list[JobStatus]
    base_url: str


class Claim(StrEnum):
    """CLAIM's answer: the attempt is this process's to make, or it is not to be made."""

    claimed = "claimed"
    # Not due (any more): another process claimed it first.
    busy = "busy"
    # Nothing left to deliver: the job expired, the delivery ended, or its attempts ran out.
    dropped = "dropped"


class Delivery(NamedTuple):
    job_id: str
    event: JobStatus

    @property
    def id(self) -> str:
        """The `webhook-id`: one per job and event, the same on every attempt."""
        return f"{self.job_id}{SEPARATOR}{self.event.value}"

    @classmethod
    def parse(cls, delivery_id: str) -> Delivery:
        job_id, _, event = delivery_id.rpartition(SEPARATOR)
        return cls(job_id, JobStatus(event))


def lua_constants() -> str:
    """`local WH_... = "..."` for every name the scripts share with this module."""
    names = {
        "WEBHOOKS_DUE": keys.WEBHOOKS_DUE,
        "JOB_KEY_PREFIX": keys.job(""),
        "WH_CONFIG": CONFIG_FIELD,
        "WH_EVENT": EVENT_FIELD,
        "WH_STATE": STATE_FIELD,
        "WH_ATTEMPTS": ATTEMPTS_FIELD,
        "WH_LAST_STATUS": LAST_STATUS_FIELD,
        "WH_SEPARATOR": SEPARATOR,
        **{f"WH_{s.name.upper()}": s.value for s in WebhookState},
        **{f"CLAIM_{c.name.upper()}": c.value for c in Claim},
    }
    for value in names.values():
        # Spliced into Lua source: keep to characters that need no escaping.
        if not re.fullmatch(r"[a-z0-9_:]+", value):
            raise ValueError(f"{value!r} is not a plain lower-case name")
    return "".join(f'local {name} = "{value}"\n' for name, value in names.items())


# Called by the jobstore transitions after they set `status` on KEYS[1], the job's record: when
# the job's webhook asks for that state, its delivery is owed from now.
SCHEDULE_LUA = """
local function schedule_webhook(status, at)
  local raw = redis.call('HGET', KEYS[1], WH_CONFIG)
  if not raw then return end
  for _, event in ipairs(cjson.decode(raw).events) do
    if event == status then
      local id = string.sub(KEYS[1], #JOB_KEY_PREFIX + 1) .. WH_SEPARATOR .. status
      redis.call('HSET', KEYS[1], WH_EVENT, status, WH_STATE .. status, WH_PENDING,
                 WH_ATTEMPTS .. status, 0)
      redis.call('HDEL', KEYS[1], WH_LAST_STATUS .. status)
      redis.call('ZADD', WEBHOOKS_DUE, at, id)
      return
    end
  end
end
"""

_SENDER_PRELUDE = (
    lua_constants()
    + """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""
)

# KEYS: the due set. ARGV: how many. The deliveries due now, by Redis' clock.
DUE = (
    _SENDER_PRELUDE
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', clock(), 'LIMIT', 0, ARGV[1])
"""
)

# KEYS: the due set, the job's record. ARGV: delivery id, event, lease in seconds, max attempts.
# Returns {CLAIM_CLAIMED, attempt number, the WebhookConfig JSON}, or {CLAIM_BUSY | CLAIM_DROPPED}.
CLAIM = (
    _SENDER_PRELUDE
    + """
local now = clock()
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > now then return {CLAIM_BUSY} end
if redis.call('HGET', KEYS[2], WH_STATE .. ARGV[2]) ~= WH_PENDING then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {CLAIM_DROPPED}
end
local attempts = tonumber(redis.call('HGET', KEYS[2], WH_ATTEMPTS .. ARGV[2]) or '0')
if attempts >= tonumber(ARGV[4]) then
  -- The last attempt's sender died before it could say how the attempt went.
  redis.call('HSET', KEYS[2], WH_STATE .. ARGV[2], WH_FAILED)
  redis.call('HDEL', KEYS[2], WH_LAST_STATUS .. ARGV[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
  return {CLAIM_DROPPED}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
attempts = redis.call('HINCRBY', KEYS[2], WH_ATTEMPTS .. ARGV[2], 1)
return {CLAIM_CLAIMED, attempts, redis.call('HGET', KEYS[2], WH_CONFIG)}
"""
)

# KEYS: the due set, the job's record. ARGV: delivery id, event, attempt number, the new state
# (WH_PENDING: due again after the delay), the HTTP status or '', the delay in seconds.
# Success always counts; any other verdict only from the delivery's latest claim, since an
# attempt that outlived its lease has been superseded by another process's.
RECORD = (
    _SENDER_PRELUDE
    + """
if redis.call('HGET', KEYS[2], WH_STATE .. ARGV[2]) ~= WH_PENDING then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local latest = redis.call('HGET', KEYS[2], WH_ATTEMPTS .. ARGV[2]) == ARGV[3]
if ARGV[4] ~= WH_DELIVERED and not latest then return 0 end
if ARGV[5] == '' then
  redis.call('HDEL', KEYS[2], WH_LAST_STATUS .. ARGV[2])
else
  redis.call('HSET', KEYS[2], WH_LAST_STATUS .. ARGV[2], ARGV[5])
end
if ARGV[4] == WH_PENDING then
  redis.call('ZADD', KEYS[1], clock() + tonumber(ARGV[6]), ARGV[1])
else
  redis.call('HSET', KEYS[2], WH_STATE .. ARGV[2], ARGV[4])
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"""
)


class ScriptArgs(NamedTuple):
    keys: list[str]
    args: list[str | int | float]


def claim_call(delivery: Delivery, lease_s: float, max_attempts: int) -> ScriptArgs:
    return ScriptArgs(
        [keys.WEBHOOKS_DUE, keys.job(delivery.job_id)],
        [delivery.id, delivery.event.value, lease_s, max_attempts],
    )


def record_call(
    delivery: Delivery,
    attempt: int,
    state: WebhookState,
    http_status: int | None,
    delay_s: float = 0.0,
) -> ScriptArgs:
    """`state` pending: due again in `delay_s`; delivered or failed: the delivery is over."""
    return ScriptArgs(
        [keys.WEBHOOKS_DUE, keys.job(delivery.job_id)],
        [
            delivery.id,
            delivery.event.value,
            attempt,
            state.value,
            "" if http_status is None else http_status,
            delay_s,
        ],
    )


class Claimed(NamedTuple):
    attempt: int
    config: WebhookConfig


def decode_claim(reply: list[object]) -> Claimed | None:
    """CLAIM's reply: the attempt to make, or None when there is none."""
    if _text(reply[0]) != Claim.claimed:
        return None
    return Claimed(int(str(reply[1])), WebhookConfig.model_validate_json(_text(reply[2])))


def job_webhook(config: WebhookConfig) -> JobWebhook:
    """A job's webhook as its record shows it before any event is delivered."""
    return JobWebhook(url=config.url, events=config.events)


def decode_webhook(fields: Mapping[str, str]) -> JobWebhook | None:
    """The job's webhook from its record's fields; None when it was created without one."""
    raw = fields.get(CONFIG_FIELD)
    if raw is None:
        return None
    hook = job_webhook(WebhookConfig.model_validate_json(raw))
    if event := fields.get(EVENT_FIELD):
        last_status = fields.get(LAST_STATUS_FIELD + event)
        hook.event = JobStatus(event)
        hook.state = WebhookState(fields[STATE_FIELD + event])
        hook.attempts = int(fields.get(ATTEMPTS_FIELD + event, 0))
        hook.last_status = int(last_status) if last_status else None
    return hook


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
