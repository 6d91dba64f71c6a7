"""The generation service: the API's logic, held on app.state and called by thin routes."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
from anyio import to_thread

from common.contract import JOB_ID, GenerateRequest, JobStatus, ModelInfo
from common.jobstore import WORKER_LOST, JobRecord, created_record
from common.results import ResultStore, StoredImage
from common.webhooks import WebhookConfig
from service import admission
from service.errors import (
    ApiError,
    IdempotencyKeyReused,
    ImageNotFound,
    InvalidParameter,
    JobAlreadyFinished,
    JobNotFound,
    ModelNotFound,
    NotReady,
    QueueFull,
)
from service.fanout import EventHub, is_terminal
from service.params import resolve
from service.queue import JobQueue, QueuePositions
from service.registry import ModelRegistry, Models
from service.rq_recording import RecordedCommands
from service.schemas import ModelCard, ReadyResponse
from service.settings import ApiSettings
from service.store import ApiJobStore, EventEntry

# How long an event stream may stay quiet before its job is looked up: expired, or failed by
# RQ's backstop? Rare: the workers' reaper re-queues a lost worker's job, which is an event.
LOST_CHECK_S = 30.0
# How soon a client should retry a job refused for a full queue.
QUEUE_FULL_RETRY_S = 10
# How soon a client should retry when no worker has ever published a model.
NO_MODEL_RETRY_S = 5
# Admissions of one request refused for a model record changed since it was read (each time
# read again): more than one in a row takes two workers of one model publishing different
# records, rewriting it in turn.
ADMISSION_TRIES = 3


@dataclass(frozen=True)
class Choice:
    """The model a request runs on, and what admission checks the choice against in Redis."""

    info: ModelInfo
    check: admission.ModelCheck


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
        hub: EventHub,
        positions: QueuePositions,
    ) -> None:
        self.settings = settings
        self.positions = positions
        self.hub = hub
        self.store = store
        self.queue = queue
        self.models = models
        self.results = results

    async def choose_model(self, requested: str | None) -> Choice:
        """The model a request runs on: the one it names, the default, or the only one known.

        A model is known while its record exists, whether or not a worker is up, so a job for
        a pool scaled to zero is queued and a queue-length autoscaler can start a worker.
        Chosen from the cached records; a refusal is made only on records read afresh, as a
        model may have appeared since (admission checks an accepted choice).
        """
        try:
            return self._choose(requested, await self.models.models())
        except ApiError:
            return self._choose(requested, await self.models.models(fresh=True))

    def _choose(self, requested: str | None, models: Models) -> Choice:
        known = models.infos
        names = ", ".join(sorted(known)) or "none yet"
        if requested is not None:
            if requested not in known:
                raise InvalidParameter(
                    f"unknown model {requested!r}; known models: {names}", field="model"
                )
            return Choice(known[requested], admission.ModelCheck(models.records[requested]))
        default = self.settings.default_model
        if default is not None:
            if default not in known:
                raise NotReady(
                    f"the default model {default!r} has not been published by a worker yet",
                    retry_after_s=NO_MODEL_RETRY_S,
                )
            return Choice(known[default], admission.ModelCheck(models.records[default]))
        if not known:
            raise NotReady(
                "no worker has published a model yet; retry shortly",
                retry_after_s=NO_MODEL_RETRY_S,
            )
        if len(known) > 1:
            raise InvalidParameter(
                f"this service serves several models; choose one of: {names}", field="model"
            )
        [(name, info)] = known.items()
        # The only one: admitted while it still is.
        return Choice(info, admission.ModelCheck(models.records[name], known=1))

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
        depths = await self.positions.depths([known.info.id for known in described])
        for known, depth in zip(described, depths, strict=True):
            cards.append(
                ModelCard(
                    **known.info.model_dump(),
                    created=known.created,
                    workers_ready=known.workers_ready,
                    queue_depth=depth,
                )
            )
        return cards

    async def submit(
        self,
        request: GenerateRequest,
        choice: Choice | None = None,
        webhook: WebhookConfig | None = None,
        *,
        owner: str | None = None,
        idempotency_key: str | None = None,
        adapt: Callable[[GenerateRequest, ModelInfo], GenerateRequest] | None = None,
    ) -> JobRecord:
        """Queue the job on the model `choice` names, or on the one `choose_model` picks for it,
        with the webhook `service.webhooks.accept_webhook` made of the request's, owned by the
        API key named `owner` (None: the API has no keys). `adapt` fits the request to the
        model's record before it is validated, at each record tried (the OpenAI route's quality
        tiers are fractions of the model's default steps).

        With an `idempotency_key`, the same key and body within a day return the job the first
        request created; the same key with another body is refused. The model's record, the
        limits, the key, the record and the enqueue are one script: one round trip, and no
        bound is ever overrun. Should the model's record have changed since it was cached, the
        job is chosen and validated again on the record read afresh.
        """
        choice = choice or await self.choose_model(request.model)
        job_id = uuid.uuid4().hex
        enqueue: tuple[str, RecordedCommands] | None = None
        for _ in range(ADMISSION_TRIES):
            try:
                params = resolve(
                    request if adapt is None else adapt(request, choice.info), choice.info
                )
            except InvalidParameter:
                # Refused only on the record Redis holds now: its workers may have been
                # redeployed with other limits since this process cached it.
                fresh = await self.models.models(fresh=True)
                if fresh.records.get(choice.info.id) == choice.check.record:
                    raise
                choice = await self.choose_model(request.model)
                continue
            model = choice.info.id
            if enqueue is None or enqueue[0] != model:
                enqueue = (model, await self._enqueue_commands(job_id, model))
            create = self.store.transitions.create(
                job_id, params, webhook, retries=self.settings.job_retries, owner=owner
            )
            call = admission.submit_call(
                create,
                job_id=job_id,
                model=model,
                check=choice.check,
                limits=admission.Limits(
                    self.settings.max_queued_jobs, self.settings.max_queued_jobs_per_key
                ),
                owner=owner,
                idempotency=(
                    None
                    if idempotency_key is None
                    else (idempotency_key, admission.fingerprint(request.model_dump(mode="json")))
                ),
                enqueue=enqueue[1],
            )
            verdict = await self.store.submit(call)
            if verdict.admitted is admission.Admitted.created and verdict.created_at is not None:
                return created_record(job_id, params, verdict.created_at, webhook, owner=owner)
            if verdict.admitted is not admission.Admitted.stale_model:
                return self._admitted(verdict, model)
            await self.models.models(fresh=True)
            choice = await self.choose_model(request.model)
        raise NotReady(
            f"the record of model {choice.info.id} changed at each of {ADMISSION_TRIES} tries "
            "to queue this job; retry",
            retry_after_s=1,
        )

    async def _enqueue_commands(self, job_id: str, model: str) -> RecordedCommands:
        if self.queue.prepared(model):
            return self.queue.enqueue_commands(job_id, model)
        return await to_thread.run_sync(self.queue.enqueue_commands, job_id, model)

    def _admitted(self, verdict: admission.Verdict, model: str) -> JobRecord:
        """The job SUBMIT replayed, or the refusal it answered."""
        match verdict.admitted:
            case admission.Admitted.replayed:
                if verdict.record is None:  # replayed, but that job has since expired
                    raise JobNotFound(
                        f"the job this Idempotency-Key created ({verdict.detail}) has expired"
                    )
                return verdict.record
            case admission.Admitted.key_reused:
                raise IdempotencyKeyReused(
                    f"this Idempotency-Key was used for another request (job {verdict.detail}) "
                    "in the last 24 h; use a new key for a new request",
                    field="idempotency-key",
                )
            case admission.Admitted.queue_full:
                raise QueueFull(
                    f"{verdict.detail} jobs are queued for {model}, the most this service "
                    "accepts; retry later",
                    retry_after_s=QUEUE_FULL_RETRY_S,
                )
            case admission.Admitted.owner_full:
                raise QueueFull(
                    f"this API key has {verdict.detail} jobs queued, the most one key may have "
                    "(SD3SERVE_MAX_QUEUED_JOBS_PER_KEY); retry once some have started",
                    retry_after_s=QUEUE_FULL_RETRY_S,
                )
            case admission.Admitted.created | admission.Admitted.stale_model:
                raise AssertionError(f"submit handles {verdict.admitted} itself")

    async def _record(self, job_id: str, owner: str | None) -> JobRecord:
        """The job as the API key named `owner` may see it; None (the API has no keys): any.

        Every read and write of a job by a client goes through here. Another key's job is
        answered as a missing one, so that a job id tells a client nothing it did not create.
        """
        record, rq_gave_up = (None, False)
        if JOB_ID.match(job_id):
            record, rq_gave_up = await self.store.read(job_id)
        if record is None or (owner is not None and record.owner != owner):
            raise JobNotFound(
                f"no job {job_id!r}; jobs are kept for {self.settings.result_ttl_s} s"
            )
        if not record.status.terminal and rq_gave_up:
            await self.store.fail(job_id, WORKER_LOST)
            record = await self._record(job_id, owner)
        return record

    async def get(self, job_id: str, *, owner: str | None) -> JobView:
        record = await self._record(job_id, owner)
        position = None
        if record.status is JobStatus.queued:
            position = await self.positions.position(job_id, record.params.model, record.created_at)
        return JobView(record, position)

    async def wait(self, job_id: str, timeout_s: float, *, owner: str | None) -> JobView:
        """Hold until the job ends or `timeout_s` passes, then return its current view."""
        with anyio.move_on_after(timeout_s):
            async with self.hub.subscribe(job_id) as queue:
                while True:
                    _, kind, payload = await queue.get()
                    if is_terminal(kind, payload):
                        break
        return await self.get(job_id, owner=owner)

    async def events(self, job_id: str, *, owner: str | None) -> AsyncIterator[EventEntry]:
        """Every event of the job from its start, ending with its final state."""
        await self._record(job_id, owner)
        async with self.hub.subscribe(job_id) as queue:
            while True:
                entry = None
                # Jittered, so a thousand quiet streams do not all look their jobs up at once.
                with anyio.move_on_after(LOST_CHECK_S * random.uniform(0.5, 1.5)):
                    entry = await queue.get()
                if entry is None:
                    # Quiet for a while: make sure the job has not been lost with its worker.
                    await self._record(job_id, owner)
                    continue
                yield entry
                if is_terminal(entry[1], entry[2]):
                    return

    async def cancel(self, job_id: str, *, owner: str | None) -> JobView:
        record = await self._record(job_id, owner)
        outcome = await self.store.cancel(job_id)
        if outcome == "canceled":
            await to_thread.run_sync(self.queue.remove, job_id, record.params.model)
            self.positions.forget(record.params.model)
        elif outcome != "cancel_requested":
            raise JobAlreadyFinished(f"job {job_id} already {outcome}; nothing to cancel")
        return await self.get(job_id, owner=owner)

    async def image(self, job_id: str, index: int, *, owner: str | None) -> StoredImage:
        record = await self._finished_image(job_id, index, owner)
        image = await to_thread.run_sync(
            self.results.get, job_id, index, record.params.output_format
        )
        if image is None:
            raise ImageNotFound(f"image {index} of job {job_id} has expired")
        return image

    async def _finished_image(self, job_id: str, index: int, owner: str | None) -> JobRecord:
        record = await self._record(job_id, owner)
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
