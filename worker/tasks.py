"""The functions RQ runs, enqueued by their string path so the API never imports this package.

RQ calls a job's function by its import path with the job's arguments only, so the warm runner
is handed over through this module: `install` is called once, before the worker's job loop.
"""

from __future__ import annotations

from worker.runner import JobRunner

_runner: JobRunner | None = None


def install(runner: JobRunner) -> None:
    global _runner
    _runner = runner


def generate(job_id: str) -> str:
    if _runner is None:
        raise RuntimeError("generate ran outside a started sd3-serve worker")
    return _runner.run(job_id)
