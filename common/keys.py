"""The Redis key layout, in one place so the API and the workers cannot drift apart."""

from typing import cast

from redis import Redis
from rq.executions import Execution, ExecutionRegistry
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.queue import Queue
from rq.registry import StartedJobRegistry

PREFIX = "sd3serve"
# Hash: model name -> its ModelInfo JSON. Every worker heartbeat rewrites its model's entry, so
# the record comes back within one heartbeat after Redis loses it; it never expires, so a model
# whose workers scaled to zero stays known and its jobs are still accepted.
MODELS = f"{PREFIX}:models"
# Hash: model name -> Unix time its record was first written (the OpenAI `created` field).
MODELS_CREATED = f"{PREFIX}:models:created"
# Sorted set of owed webhook deliveries (common.webhooks.Delivery ids), each scored by the Redis
# time it is due at: now, after a backoff, or when the lease of the attempt under way ends.
WEBHOOKS_DUE = f"{PREFIX}:webhooks:due"
# Prefix of the API keys' rate-limit windows (service.auth): `limits` appends `:` and the item,
# e.g. `sd3serve:ratelimit:LIMITER/alice/60/1/minute`, a list of request times that expires.
RATE_LIMITS = f"{PREFIX}:ratelimit"


def workers(model: str) -> str:
    """Sorted set of the model's warm workers, each scored by when its heartbeat lapses."""
    return f"{PREFIX}:workers:{model}"


def queue_name(model: str) -> str:
    """The model's RQ queue name; RQ keeps the jobs in the list `rq:queue:<this name>`."""
    return f"{PREFIX}:{model}"


def job(job_id: str) -> str:
    """Hash holding the job record."""
    return f"{PREFIX}:job:{job_id}"


_EVENTS_SUFFIX = ":events"


def events(job_id: str) -> str:
    """Stream of the job's events, read from the start by every SSE client."""
    return f"{job(job_id)}{_EVENTS_SUFFIX}"


def job_id_of_events(stream: str) -> str:
    """The job whose event stream `stream` is: the inverse of `events`."""
    return stream.removeprefix(job("")).removesuffix(_EVENTS_SUFFIX)


def wake_stream(process: str) -> str:
    """Stream an API process's event reader also reads, so a new subscriber can wake it."""
    return f"{PREFIX}:wake:{process}"


def script_keys(job_id: str) -> list[str]:
    """KEYS of every job-transition script in common.jobstore: the record, then its events."""
    return [job(job_id), events(job_id)]


def running(model: str) -> str:
    """Set of the model's jobs a worker has started and no reaper has yet seen end: the ones
    whose worker's heartbeat the reaper watches."""
    return f"{PREFIX}:running:{model}"


def beats(model: str) -> str:
    """Sorted set of the model's worker processes, one id per run of a process (a restarted
    worker is a new one), each scored by the Redis time of its latest heartbeat."""
    return f"{PREFIX}:beats:{model}"


def busy(model: str) -> str:
    """Hash: worker process id -> the job it said it was running at its latest heartbeat ('' when
    none), so a live worker that no longer runs a job still marked as its own gives it up."""
    return f"{PREFIX}:busy:{model}"


def dequeued(model: str) -> str:
    """Hash: id of a job a worker took off the model's queue but has not started -> the Redis
    time a reaper first saw it so, to put it back if its worker never starts it."""
    return f"{PREFIX}:dequeued:{model}"


# RQ's own keys, named by RQ's classes so that RQ_KEY_PREFIX and RQ's layout are followed: the
# reaper puts a job whose worker is gone back on its queue as RQ itself would.


def rq_queue(model: str) -> str:
    """The list RQ's queue of the model keeps its waiting job ids in; RQ pops from the left."""
    return f"{Queue.redis_queue_namespace_prefix}{queue_name(model)}"


def rq_dequeued(model: str) -> str:
    """RQ's list of the model's jobs a worker has popped but not yet registered as started."""
    return IntermediateQueue.get_intermediate_queue_key(rq_queue(model))


def rq_started(model: str) -> str:
    """RQ's StartedJobRegistry of the model's queue: `job:execution` ids scored by expiry."""
    return StartedJobRegistry.key_template.format(queue_name(model))


def rq_job(job_id: str) -> str:
    """RQ's hash of the job (its `status` among others)."""
    return Job.key_for(job_id)


def rq_executions(job_id: str) -> str:
    """RQ's sorted set of the ids of the job's executions (one per run a worker began)."""
    return ExecutionRegistry.key_template.format(job_id)


def _rq_execution(job_id: str, execution_id: str) -> Execution:
    # Only its names are used: no command is sent, so it needs no connection.
    return Execution(execution_id, job_id, connection=cast(Redis, None))


def rq_execution(job_id: str, execution_id: str) -> str:
    """RQ's hash of one execution of the job."""
    return str(_rq_execution(job_id, execution_id).key)


def rq_started_member(job_id: str, execution_id: str) -> str:
    """The member an execution of the job has in RQ's StartedJobRegistry."""
    return str(_rq_execution(job_id, execution_id).composite_key)


def idempotency(owner: str, digest: str) -> str:
    """String: `<job id>|<request fingerprint>` of the job an Idempotency-Key created, per API
    key (`owner`, empty without keys) and by the key's digest (a header value is any bytes)."""
    return f"{PREFIX}:idem:{owner}:{digest}"


def owner_queued(owner: str) -> str:
    """Set of the ids of an API key's jobs that were queued, pruned as they leave the queue."""
    return f"{PREFIX}:owner:{owner}:queued"
