"""The generation service: the API's logic, held on app.state and called by thin routes."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from anyio import to_thread

from common.contract import GenerateRequest, JobStatus, ModelInfo
from common.jobstore import JobRecord
from common.results import ResultStore, StoredImage
from service.errors import ImageNotFound, JobAlreadyFinished, JobNotFound, NotReady, QueueFull
from service.params import resolve
from service.queue import JobQueue
from service.schemas import ReadyResponse
from service.settings import ApiSettings
from service.store import ApiJobStore, EventEntry

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
EVENT_POLL_MS = 5000
WORKER_LOST = "the worker running this job stopped before it finished, and no retry was left"


@dataclass
class JobView:
    record: JobRecord
    queue_position: int | None = None


class GenerationService:
    def __init__(
        self, settings: ApiSettings, store: ApiJobStore, queue: JobQueue, results: ResultStore
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.results = results

    async def model(self) -> ModelInfo:
        info = await self.store.model_info()
        if info is None:
            raise NotReady("no worker has loaded a model yet; retry shortly", retry_after_s=5)
        return info

    async def submit(self, request: GenerateRequest) -> JobRecord:
        params = resolve(request, await self.model())
        depth = await to_thread.run_sync(self.queue.depth)
        if depth >= self.settings.max_queued_jobs:
            raise QueueFull(
                f"{depth} jobs are queued, the most this service accepts; retry later",
                retry_after_s=10,
            )
        job_id = uuid.uuid4().hex
        await self.store.create(job_id, params)
        try:
            await to_thread.run_sync(self.queue.enqueue, job_id)
        except Exception:
            await self.store.fail(job_id, "the job could not be queued")
            raise
        return await self._record(job_id)

    async def _record(self, job_id: str) -> JobRecord:
        record = await self.store.get(job_id) if _JOB_ID.match(job_id) else None
        if record is None:
            raise JobNotFound(
                f"no job {job_id!r}; jobs are kept for {self.settings.result_ttl_s} s"
            )
        if not record.status.terminal and await to_thread.run_sync(self.queue.worker_lost, job_id):
            await self.store.fail(job_id, WORKER_LOST)
            record = await self._record(job_id)
        return record

    async def get(self, job_id: str) -> JobView:
        record = await self._record(job_id)
        position = None
        if record.status is JobStatus.queued:
            position = await to_thread.run_sync(self.queue.position, job_id)
        return JobView(record, position)

    async def wait(self, job_id: str, timeout_s: float) -> JobView:
        """Block until the job ends or `timeout_s` passes, then return its current view."""
        deadline = time.monotonic() + timeout_s
        after = "0"
        while (left := deadline - time.monotonic()) > 0:
            entries = await self.store.events(job_id, after, block_ms=max(1, int(left * 1000)))
            if any(_is_terminal(kind, payload) for _, kind, payload in entries):
                break
            if entries:
                after = entries[-1][0]
        return await self.get(job_id)

    async def events(self, job_id: str) -> AsyncIterator[EventEntry]:
        """Every event of the job from its start, ending with its final state."""
        await self._record(job_id)
        after = "0"
        while True:
            entries = await self.store.events(job_id, after, block_ms=EVENT_POLL_MS)
            for entry in entries:
                yield entry
                if _is_terminal(entry[1], entry[2]):
                    return
            if entries:
                after = entries[-1][0]
            else:
                # Quiet for a while: make sure the job has not been lost with its worker.
                await self._record(job_id)

    async def cancel(self, job_id: str) -> JobView:
        await self._record(job_id)
        outcome = await self.store.cancel(job_id)
        if outcome == "canceled":
            await to_thread.run_sync(self.queue.remove, job_id)
        elif outcome != "cancel_requested":
            raise JobAlreadyFinished(f"job {job_id} already {outcome}; nothing to cancel")
        return await self.get(job_id)

    async def image(self, job_id: str, index: int) -> StoredImage:
        record = await self._record(job_id)
        if record.status is not JobStatus.succeeded:
            raise ImageNotFound(f"job {job_id} is {record.status}; images exist once it succeeds")
        if not 0 <= index < record.image_count:
            raise ImageNotFound(
                f"job {job_id} has images 0..{record.image_count - 1}; got {index}", field="index"
            )
        image = await to_thread.run_sync(self.results.get, job_id, index)
        if image is None:
            raise ImageNotFound(f"image {index} of job {job_id} has expired")
        return image

    async def readiness(self) -> ReadyResponse:
        try:
            redis_ok = await self.store.ping()
            workers = await self.store.live_workers()
        except Exception:
            return ReadyResponse(ready=False, redis=False, workers=0)
        return ReadyResponse(ready=redis_ok and workers > 0, redis=redis_ok, workers=workers)


def _is_terminal(kind: str, payload: dict[str, object]) -> bool:
    return kind == "status" and JobStatus(str(payload["status"])).terminal
