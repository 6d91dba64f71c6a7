"""The functions RQ runs, enqueued by their string path so the API never imports this package.

RQ calls a job's function by its import path with the job's arguments only, so the warm runner
is handed over through this module: `install` is called once, before the worker's job loop.
"""

from __future__ import annotations

from rq import get_current_job

from worker.runner import JobRunner

_runner: JobRunner | None = None


def install(runner: JobRunner) -> None:
    global _runner
    _runner = runner


def generate(job_id: str | None = None) -> str:
    """Run the job RQ is performing: its id is RQ's job id. The API enqueues it with no
    arguments, so that every job's call is the same (service.rq_recording); `job_id` runs the
    jobs that API versions before that queued with their id as the argument."""
    if _runner is None:
        raise RuntimeError("generate ran outside a started sd3-serve worker")
    if job_id is None:
        job = get_current_job()
        if job is None:
            raise RuntimeError("generate ran outside an RQ job")
        job_id = job.id
    return _runner.run(job_id)
