"""The Redis key layout, in one place so the API and the workers cannot drift apart."""

PREFIX = "sd3serve"
MODEL_INFO = f"{PREFIX}:model"
# Sorted set of warm workers, each scored by when its heartbeat lapses (on Redis' clock).
WORKERS = f"{PREFIX}:workers"


def job(job_id: str) -> str:
    """Hash holding the job record."""
    return f"{PREFIX}:job:{job_id}"


def events(job_id: str) -> str:
    """Stream of the job's events, read from the start by every SSE client."""
    return f"{PREFIX}:job:{job_id}:events"


def script_keys(job_id: str) -> list[str]:
    """KEYS of every job-transition script in common.jobstore: the record, then its events."""
    return [job(job_id), events(job_id)]
