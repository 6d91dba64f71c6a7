"""Admission (service.admission.SUBMIT) against a real redis-server, then through the real API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq.job import Job

from common import keys
from common.contract import JobStatus
from common.jobstore import created_record, decode_record
from common.webhooks import WebhookConfig
from service import admission
from service.admission import Admitted, Limits, Verdict
from service.dev import publish_idle_model
from service.queue import JobQueue
from service.store import ApiJobStore
from tests.harness import deployment, settings_env
from tests.helpers import job_params
from worker.store import WorkerJobStore

MODEL = "m"
PARAMS = job_params(MODEL)
ROOMY = Limits(max_queued=1000, owner_cap=1000)
HOOK = WebhookConfig(
    url="https://hooks.example/x", events=[JobStatus.succeeded], base_url="http://api/"
)


@pytest.fixture
def r(redis_url: str) -> Iterator[Redis]:
    with Redis.from_url(redis_url, decode_responses=True) as r:
        r.flushdb()
        yield r


def submit(
    redis_url: str,
    *,
    limits: Limits = ROOMY,
    owner: str | None = None,
    idempotency: tuple[str, str] | None = None,
    webhook: WebhookConfig | None = None,
) -> Verdict:
    job_id = uuid.uuid4().hex
    with Redis.from_url(redis_url) as rq_redis:
        enqueue = JobQueue(rq_redis, job_timeout_s=60, ttl_s=3600).enqueue_commands(job_id, MODEL)

    async def go() -> Verdict:
        redis = AsyncRedis.from_url(redis_url, decode_responses=True)
        try:
            store = ApiJobStore(redis, 3600)
            create = store.transitions.create(job_id, PARAMS, webhook, owner=owner)
            call = admission.submit_call(
                create,
                job_id=job_id,
                model=MODEL,
                limits=limits,
                owner=owner,
                idempotency=idempotency,
                enqueue=enqueue,
            )
            return await store.submit(call)
        finally:
            await redis.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("owner", [None, "alice"])
@pytest.mark.parametrize("webhook", [None, HOOK])
def test_the_created_record_is_the_one_redis_holds(
    r: Redis, redis_url: str, owner: str | None, webhook: WebhookConfig | None
) -> None:
    # SUBMIT answers a created job with its creation time only; the API builds the rest.
    verdict = submit(redis_url, owner=owner, webhook=webhook)
    assert verdict.admitted is Admitted.created and verdict.created_at is not None
    built = created_record(verdict.detail, PARAMS, verdict.created_at, webhook, owner=owner)
    fields: dict[str, str] = r.hgetall(keys.job(verdict.detail))  # type: ignore[assignment]
    assert built == decode_record(verdict.detail, fields)
    assert built.status is JobStatus.queued and (built.webhook is None) is (webhook is None)


def test_an_admitted_job_is_recorded_and_enqueued_as_rq_does(r: Redis, redis_url: str) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    verdicts = [submit(redis_url) for _ in range(3)]
    after = datetime.now(UTC) + timedelta(seconds=1)
    for verdict in verdicts:
        assert verdict.admitted is Admitted.created and verdict.created_at is not None
        assert before.timestamp() < verdict.created_at < after.timestamp()
    ids = [verdict.detail for verdict in verdicts]
    assert r.lrange(keys.rq_queue(MODEL), 0, -1) == ids
    with Redis.from_url(redis_url) as raw:
        for job_id in ids:
            # RQ's enqueue, replayed with this job's id and time (service.rq_recording).
            job = Job.fetch(job_id, connection=raw)
            # No arguments: the task reads its job's id from RQ.
            assert job.func_name == "worker.tasks.generate" and job.args == ()
            assert job.get_status() == "queued" and job.origin == keys.queue_name(MODEL)
            assert job.timeout == 60 and job.result_ttl == 3600 and job.failure_ttl == 3600
            for at in (job.created_at, job.enqueued_at):
                assert at is not None and before <= at.replace(tzinfo=UTC) <= after


def test_the_queue_bound_holds_under_concurrent_submissions(r: Redis, redis_url: str) -> None:
    bound = 10
    with ThreadPoolExecutor(16) as pool:
        verdicts = list(
            pool.map(lambda _: submit(redis_url, limits=Limits(bound, 1000)).admitted, range(60))
        )
    assert verdicts.count(Admitted.created) == bound
    assert verdicts.count(Admitted.queue_full) == 60 - bound
    assert r.llen(keys.rq_queue(MODEL)) == bound


def test_a_key_cap_counts_only_jobs_still_queued(r: Redis, redis_url: str) -> None:
    cap = Limits(max_queued=1000, owner_cap=2)
    first, second = (submit(redis_url, limits=cap, owner="a") for _ in range(2))
    assert submit(redis_url, limits=cap, owner="a").admitted is Admitted.owner_full
    assert submit(redis_url, limits=cap, owner="b").admitted is Admitted.created
    # Once one of a's jobs has started, a has room again.
    WorkerJobStore(r, 3600).start(first.detail)
    assert submit(redis_url, limits=cap, owner="a").admitted is Admitted.created
    assert second.admitted is Admitted.created


def test_idempotency_key_replays_refuses_another_body_and_is_per_api_key(
    r: Redis, redis_url: str
) -> None:
    created = submit(redis_url, idempotency=("k1", "body-1"))
    replayed = submit(redis_url, idempotency=("k1", "body-1"))
    assert replayed.admitted is Admitted.replayed and replayed.detail == created.detail
    assert replayed.record is not None and replayed.record.id == created.detail
    reused = submit(redis_url, idempotency=("k1", "body-2"))
    assert reused.admitted is Admitted.key_reused and reused.detail == created.detail
    other_owner = submit(redis_url, owner="b", idempotency=("k1", "body-1"))
    assert other_owner.admitted is Admitted.created and other_owner.detail != created.detail
    # A replay enqueued nothing.
    assert r.llen(keys.rq_queue(MODEL)) == 2


def test_a_full_queue_writes_nothing(r: Redis, redis_url: str) -> None:
    submit(redis_url, limits=Limits(1, 1000))
    before = sorted(r.keys("*"))
    refused = submit(redis_url, limits=Limits(1, 1000), idempotency=("k", "b"))
    assert refused.admitted is Admitted.queue_full
    assert sorted(r.keys("*")) == before


@pytest.mark.stack
def test_idempotent_retries_and_the_bound_through_the_api(tmp_path: Path, model_dir: Path) -> None:
    bound = 5
    with deployment(tmp_path, model_dir, settings_env(max_queued_jobs=bound)) as d:
        publish_idle_model(d.redis_url, "idle")  # known, never run: its jobs stay queued
        client = d.api.client
        key = {"Idempotency-Key": str(uuid.uuid4())}
        first = client.post("/v1/generate", json={"prompt": "x", "seed": 1}, headers=key)
        again = client.post("/v1/generate", json={"prompt": "x", "seed": 1}, headers=key)
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        other = client.post("/v1/generate", json={"prompt": "y", "seed": 1}, headers=key)
        assert other.status_code == 422
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        assert other.json()["error"]["field"] == "idempotency-key"
        bad = client.post("/v1/generate", json={"prompt": "x"}, headers={"Idempotency-Key": "a b"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "idempotency-key"
        assert "Idempotency-Key must be" in bad.json()["error"]["message"]

        def post(_: int) -> int:
            with httpx.Client(base_url=d.api.url, timeout=60) as c:
                return c.post("/v1/generate", json={"prompt": "z"}).status_code

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(post, range(40)))
        assert codes.count(202) == bound - 1 and codes.count(429) == 40 - (bound - 1)
        assert client.get("/v1/models/idle").json()["queue_depth"] == bound
