"""A job's Server-Sent Events as typed values.

The API sends `status` (`{"status", "error"?}`, once per state change) and `progress`
(`{"step", "total"}`, once per denoising step); the stream ends after the final state.
"""

from __future__ import annotations

from dataclasses import dataclass

from httpx_sse import ServerSentEvent

from sd3serve_client._generated.models.job_status import JobStatus

FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


@dataclass(frozen=True)
class ProgressEvent:
    """Denoising step `step` of `total` is done."""

    step: int
    total: int
    id: str = ""


@dataclass(frozen=True)
class StatusEvent:
    """The job entered `status`; `error` says why it failed or was canceled."""

    status: JobStatus
    error: str | None = None
    id: str = ""

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


Event = ProgressEvent | StatusEvent


def parse(sse: ServerSentEvent) -> Event | None:
    """The event an SSE message carries; None for keep-alives and for kinds newer than this SDK."""
    if not sse.data:
        return None
    if sse.event == "progress":
        data = sse.json()
        return ProgressEvent(step=int(data["step"]), total=int(data["total"]), id=sse.id)
    if sse.event == "status":
        data = sse.json()
        error = data.get("error")
        return StatusEvent(
            status=JobStatus(data["status"]),
            error=None if error is None else str(error),
            id=sse.id,
        )
    return None
