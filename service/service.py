"""The generation service: the API's logic, held on app.state and called by thin routes."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from anyio import to_thread

from common.contract import JOB_ID, GenerateRequest, JobStatus, ModelInfo
from common.jobstore import JobRecord
from common.results import ResultStore, StoredImage
from service.errors import (
    ImageNotFound,
    InvalidParameter,
    JobAlreadyFinished,
    JobNotFound,
    ModelNotFound,
    NotReady,
    QueueFull,
)
from service.params import resolve
from service.queue import JobQueue
from service.registry import ModelRegistry
from service.schemas import ModelCard, ReadyResponse
from service.settings import ApiSettings
from service.store import ApiJobStore, EventEntry

EVENT_POLL_MS = 5000
WORKER_LOST = "the worker running this job stopped before it finished, and no retry was left"
# How soon a client should retry when no worker has ever published a model.
NO_MODEL_RETRY_S = 5


@dataclass
class JobView:
    record: JobRecord
    queue_position: int | None = None


class GenerationService:
    def __init__(
        self,
        settings: ApiSettings,
        store: ApiJobStore,
        queue: JobQueue,
        models: ModelRegistry,
        results: ResultStore,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.models = models
        self.results = results

    async def choose_model(self, requested: str | None) -> ModelInfo:
        """The model a request runs on: the one it names, the default, or the only one known.

        A model is known while its record exists, whether or not a worker is up, so a job for
        a pool scaled to zero is queued and a queue-length autoscaler can start a worker.
        """
        known = await self.models.infos()
        names = ", ".join(sorted(known)) or "none yet"
        if requested is not None:
            if requested not in known:
                raise InvalidParameter(
                    f"unknown model {requested!r}; known models: {names}", field="model"
                )
            return known[requested]
        default = self.settings.default_model
        if default is not None:
            if default not in known:
                raise NotReady(
                    f"the default model {default!r} has not been published by a worker yet",
                    retry_after_s=NO_MODEL_RETRY_S,
                )
            return known[default]
        if not known:
            raise NotReady(
                "no worker has published a model yet; retry shortly",
                retry_after_s=NO_MODEL_RETRY_S,
            )
        if len(known) > 1:
            raise InvalidParameter(
                f"this service serves several models; choose one of: {names}", field="model"
            )
        return next(iter(known.values()))

    async def list_models(self) -> list[ModelCard]:
        return await self._cards(await self.models.infos())

    async def get_model(self, name: str) -> ModelCard:
        infos = await self.models.infos()
        if name not in infos:
            raise ModelNotFound(f"no model {name!r}; GET /v1/models lists the known ones")
        [card] = await self._cards({name: infos[name]})
        return card

    async def _cards(self, infos: dict[str, ModelInfo]) -> list[ModelCard]:
        described = await self.models.describe(infos)
        cards = []
        for known in described:
            depth = await to_thread.run_sync(self.queue.depth, known.info.id)
            cards.append(
                ModelCard(
                    **known.info.model_dump(),
                    created=known.created,
                    workers_ready=known.workers_ready,
                    queue_depth=depth,
                )
            )
        return cards

    async def submit(self, request: GenerateRequest, info: ModelInfo | None = None) -> JobRecord:
        """Queue the job on `info`'s model, or on the one `choose_model` picks for it."""
        info = info or await self.choose_model(request.model)
        params = resolve(request, info)
        depth = await to_thread.run_sync(self.queue.depth, info.id)
        if depth >= self.settings.max_queued_jobs:
            raise QueueFull(
                f"{depth} jobs are queued for {info.id}, the most this service accepts; "
                "retry later",
                retry_after_s=10,
            )
        job_id = uuid.uuid4().hex
        await self.store.create(job_id, params)
        try:
            await to_thread.run_sync(self.queue.enqueue, job_id, info.id)
        except Exception:
            await self.store.fail(job_id, "the job could not be queued")
            raise
        return await self._record(job_id)

    async def _record(self, job_id: str) -> JobRecord:
        record = await self.store.get(job_id) if JOB_ID.match(job_id) else None
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
            position = await to_thread.run_sync(self.queue.position, job_id, record.params.model)
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
        record = await self._record(job_id)
        outcome = await self.store.cancel(job_id)
        if outcome == "canceled":
            await to_thread.run_sync(self.queue.remove, job_id, record.params.model)
        elif outcome != "cancel_requested":
            raise JobAlreadyFinished(f"job {job_id} already {outcome}; nothing to cancel")
        return await self.get(job_id)

    async def image(self, job_id: str, index: int) -> StoredImage:
        record = await self._finished_image(job_id, index)
        image = await to_thread.run_sync(
            self.results.get, job_id, index, record.params.output_format
        )
        if image is None:
            raise ImageNotFound(f"image {index} of job {job_id} has expired")
        return image

    async def _finished_image(self, job_id: str, index: int) -> JobRecord:
        record = await self._record(job_id)
        if record.status is not JobStatus.succeeded:
            raise ImageNotFound(f"job {job_id} is {record.status}; images exist once it succeeds")
        if not 0 <= index < record.image_count:
            raise ImageNotFound(
                f"job {job_id} has images 0..{record.image_count - 1}; got {index}", field="index"
            )
        return record

    def presigned_image_urls(self, record: JobRecord) -> list[str] | None:
        """Object-store URLs of the job's images that expire with it, when so configured."""
        if self.settings.result_urls != "presigned" or record.finished_at is None:
            return None
        expires_in = int(record.finished_at + self.settings.result_ttl_s - time.time())
        fmt = record.params.output_format
        return [
            self.results.presigned_url(record.id, i, fmt, max(1, expires_in))
            for i in range(record.image_count)
        ]

    async def readiness(self) -> ReadyResponse:
        """Ready whenever Redis answers: with no worker up, jobs still queue for an autoscaler."""
        try:
            redis_ok = await self.store.ping()
            workers = await self.models.live_workers()
        except Exception:
            return ReadyResponse(ready=False, redis=False, workers=0)
        return ReadyResponse(ready=redis_ok, redis=redis_ok, workers=workers)


def _is_terminal(kind: str, payload: dict[str, object]) -> bool:
    return kind == "status" and JobStatus(str(payload["status"])).terminal
