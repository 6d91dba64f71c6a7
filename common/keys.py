"""The Redis key layout, in one place so the API and the workers cannot drift apart."""

PREFIX = "sd3serve"
# Hash: model name -> its ModelInfo JSON. Every worker heartbeat rewrites its model's entry, so
# the record comes back within one heartbeat after Redis loses it; it never expires, so a model
# whose workers scaled to zero stays known and its jobs are still accepted.
MODELS = f"{PREFIX}:models"
# Hash: model name -> Unix time its record was first written (the OpenAI `created` field).
MODELS_CREATED = f"{PREFIX}:models:created"


def workers(model: str) -> str:
    """Sorted set of the model's warm workers, each scored by when its heartbeat lapses."""
    return f"{PREFIX}:workers:{model}"


def queue_name(model: str) -> str:
    """The model's RQ queue name; RQ keeps the jobs in the list `rq:queue:<this name>`."""
    return f"{PREFIX}:{model}"


def job(job_id: str) -> str:
    """Hash holding the job record."""
    return f"{PREFIX}:job:{job_id}"


def events(job_id: str) -> str:
    """Stream of the job's events, read from the start by every SSE client."""
    return f"{PREFIX}:job:{job_id}:events"


def script_keys(job_id: str) -> list[str]:
    """KEYS of every job-transition script in common.jobstore: the record, then its events."""
    return [job(job_id), events(job_id)]
