"""Signed webhooks, against real parts: Redis, the API over HTTP, a worker, and a receiver.

The receiver is a real HTTP server on loopback that checks every delivery with the Standard
Webhooks reference implementation and answers per a plan for its path, so each test has its own
path and reads only its own deliveries. Every wait polls a recorded fact (the job's webhook
state, the receiver's log); nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import random
import threading
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from redis import Redis
from standardwebhooks import Webhook, WebhookVerificationError

from common import keys, webhooks
from common.contract import (
    JobStatus,
    WebhookRequest,
    WebhookState,
)
from common.jobstore import CANCEL, CREATE, FINISH, START, Transitions
from common.settings import env_var
from common.webhooks import Claim, Delivery, WebhookConfig
from service.dev import Stack, publish_idle_model, wait_until
from service.webhooks import (
    Unresolvable,
    UnsafeUrl,
    backoff_s,
    refused_address,
    resolve,
    worth_retrying,
)
from tests.harness import (
    START_TIMEOUT_S,
    Api,
    Deployment,
    base_env,
    deployment,
    poll,
    settings_env,
    start_api,
    start_redis,
    start_worker,
    worker_count,
)
from tests.helpers import job_params

SECRET = "whsec_" + base64.b64encode(b"sd3-serve webhook test secret, 32b").decode()
MAX_ATTEMPTS = 4
# Small waits between attempts keep the retry tests short; the lease is the timeout + 5 s.
WEBHOOK_ENV = settings_env(
    webhook_secret=SECRET,
    webhook_allow_private="true",
    webhook_max_attempts=MAX_ATTEMPTS,
    webhook_timeout_s=5,
    webhook_backoff_s=0.2,
    webhook_backoff_max_s=1,
)
FAST = {"prompt": "a small red circle", "steps": 2}
TTL_S = 600


# ---- the receiver ----


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes
    # The verified, parsed body; None when the signature did not verify.
    job: dict[str, Any] | None

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


@dataclass
class Route:
    # Statuses to answer in turn; 200 once they are used up.
    plan: list[int] = field(default_factory=list)
    # Hold the first request until released: a receiver still working when its sender dies.
    hold_first: bool = False
    first_arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    hits: list[Hit] = field(default_factory=list)


class Receiver:
    """A real HTTP server on loopback, in a thread, verifying each delivery's signature."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.lock = threading.Lock()
        self.verifier = Webhook(SECRET)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    job = receiver.verifier.verify(body, headers)
                except WebhookVerificationError:
                    job = None
                status = receiver.arrive(self.path, Hit(headers, body, job))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def arrive(self, path: str, hit: Hit) -> int:
        with self.lock:
            route = self.routes.setdefault(path, Route())
            route.hits.append(hit)
            first = len(route.hits) == 1
            status = route.plan.pop(0) if route.plan else 200
        if route.hold_first and first:
            route.first_arrived.set()
            route.release.wait(timeout=300)
        return status if hit.job is not None else 401

    def route(self, plan: list[int] | None = None, hold_first: bool = False) -> tuple[str, Route]:
        """A fresh path's URL and its route."""
        path = f"/hooks/{uuid.uuid4().hex}"
        route = Route(plan=list(plan or []), hold_first=hold_first)
        with self.lock:
            self.routes[path] = route
        return f"http://127.0.0.1:{self.server.server_port}{path}", route

    def hits(self, route: Route) -> list[Hit]:
        with self.lock:
            return list(route.hits)

    def close(self) -> None:
        with self.lock:
            for route in self.routes.values():
                route.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


# ---- the stacks ----


@pytest.fixture(scope="module")
def hooks(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Deployment]:
    """Redis, an API that sends webhooks to loopback, and a warm worker."""
    with deployment(tmp_path_factory.mktemp("hooks"), model_dir, WEBHOOK_ENV) as d:
        start_worker(d.stack, d.env, "webhook-worker")
        wait_until(lambda: worker_count(d.api) == 1, d.stack, "a warm worker", START_TIMEOUT_S)
        yield d


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Deployment]:
    """Redis and an API that sends webhooks to public addresses only, as in production."""
    env = WEBHOOK_ENV | settings_env(webhook_allow_private="false")
    with deployment(tmp_path_factory.mktemp("guarded"), model_dir, env) as d:
        yield d


@pytest.fixture(scope="module")
def no_secret(guarded: Deployment) -> Iterator[Api]:
    """An API with no webhook secret, on the guarded stack."""
    env = {k: v for k, v in guarded.env.items() if k != env_var("webhook_secret")}
    api = start_api(guarded.stack, env)
    with closing(api.client):
        yield api


def generate(api: Api, hook: dict[str, Any], **body: Any) -> httpx.Response:
    return api.client.post("/v1/generate", json=FAST | body | {"webhook": hook})


def accepted(api: Api, hook: dict[str, Any], **body: Any) -> str:
    response = generate(api, hook, **body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert job["webhook"] == {
        "url": hook["url"],
        "events": hook.get("events", ["succeeded", "failed", "canceled"]),
        "event": None,
        "state": None,
        "attempts": 0,
        "last_status": None,
    }
    return str(job["id"])


def webhook_ends(api: Api, job_id: str, state: WebhookState) -> dict[str, Any]:
    """The job once its latest delivery is `state` (and the job final), as GET renders it."""
    found: dict[str, Any] = {}

    def ended() -> bool:
        job = api.client.get(f"/v1/jobs/{job_id}").json()
        found.update(job)
        return bool(JobStatus(job["status"]).terminal and job["webhook"]["state"] == state)

    poll(ended, f"job {job_id}'s webhook {state}", timeout_s=120)
    return found


def refused(response: httpx.Response, field_name: str) -> str:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_parameter", field_name), error
    return str(error["message"])


# ---- deliveries ----


@pytest.mark.stack
def test_delivery_is_signed_retried_under_one_id_and_recorded(
    hooks: Deployment, receiver: Receiver
) -> None:
    url, route = receiver.route(plan=[500, 500])
    job_id = accepted(hooks.api, {"url": url})

    job = webhook_ends(hooks.api, job_id, WebhookState.delivered)
    assert job["status"] == "succeeded"
    assert job["webhook"] | {"url": None} == {
        "url": None,
        "events": ["succeeded", "failed", "canceled"],
        "event": "succeeded",
        "state": "delivered",
        "attempts": 3,
        "last_status": 200,
    }
    hits = receiver.hits(route)
    assert len(hits) == 3
    assert {hit.webhook_id for hit in hits} == {f"{job_id}_succeeded"}
    for hit in hits:
        assert hit.job is not None, "the signature did not verify"
        assert hit.headers["content-type"] == "application/json"
        # The body is the job, its links absolute on the API the job was submitted to.
        assert hit.job["id"] == job_id and hit.job["status"] == "succeeded"
        assert hit.job["links"]["self"] == f"{hooks.api.url}/v1/jobs/{job_id}"
        assert hit.job["links"]["images"] == [f"{hooks.api.url}/v1/jobs/{job_id}/images/0"]
    # Attempt k's body says k attempts: each one re-renders and re-signs the job.
    assert [hit.job["webhook"]["attempts"] for hit in hits if hit.job] == [1, 2, 3]
    # A signature binds the body to its id and timestamp: another body does not verify.
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(hits[0].body + b" ", hits[0].headers)


@pytest.mark.stack
def test_only_the_requested_events_are_delivered(hooks: Deployment, receiver: Receiver) -> None:
    final_url, final_route = receiver.route()
    both_url, both_route = receiver.route()
    final_only = accepted(hooks.api, {"url": final_url, "events": ["succeeded"]})
    both = accepted(hooks.api, {"url": both_url, "events": ["running", "succeeded"]})

    webhook_ends(hooks.api, final_only, WebhookState.delivered)
    # `running` was never owed: the transition that would have owed it has happened.
    assert [hit.webhook_id for hit in receiver.hits(final_route)] == [f"{final_only}_succeeded"]
    with Redis.from_url(hooks.redis_url, decode_responses=True) as r:
        assert r.zscore(keys.WEBHOOKS_DUE, f"{final_only}_running") is None
        assert r.hget(keys.job(final_only), webhooks.STATE_FIELD + "running") is None

    job = webhook_ends(hooks.api, both, WebhookState.delivered)
    assert job["webhook"]["event"] == "succeeded"
    with Redis.from_url(hooks.redis_url, decode_responses=True) as r:
        poll(
            lambda: r.hget(keys.job(both), webhooks.STATE_FIELD + "running") == "delivered",
            "the running event's delivery",
        )
    ids = sorted(hit.webhook_id for hit in receiver.hits(both_route))
    assert ids == [f"{both}_running", f"{both}_succeeded"]


@pytest.mark.stack
def test_a_4xx_answer_is_final(hooks: Deployment, receiver: Receiver) -> None:
    url, route = receiver.route(plan=[410])
    job_id = accepted(hooks.api, {"url": url})
    job = webhook_ends(hooks.api, job_id, WebhookState.failed)
    assert (job["webhook"]["attempts"], job["webhook"]["last_status"]) == (1, 410)
    assert len(receiver.hits(route)) == 1


@pytest.mark.stack
def test_attempts_are_bounded(hooks: Deployment, receiver: Receiver) -> None:
    url, route = receiver.route(plan=[503] * (MAX_ATTEMPTS + 2))
    job_id = accepted(hooks.api, {"url": url})
    job = webhook_ends(hooks.api, job_id, WebhookState.failed)
    assert (job["webhook"]["attempts"], job["webhook"]["last_status"]) == (MAX_ATTEMPTS, 503)
    assert len(receiver.hits(route)) == MAX_ATTEMPTS


@pytest.mark.stack
def test_a_delivery_survives_the_death_of_its_sender(tmp_path: Path, receiver: Receiver) -> None:
    """The API sending a delivery is SIGKILLed mid-POST; a new API on the same Redis sends it
    again, under the same webhook-id, once the dead sender's lease has run out."""
    redis_stack, first, second = Stack(), Stack(), Stack()
    url, route = receiver.route(hold_first=True)
    try:
        redis_url = start_redis(redis_stack, tmp_path)
        model = publish_idle_model(redis_url, "hooked")
        env = base_env(redis_url, tmp_path / "results", tmp_path) | WEBHOOK_ENV
        api = start_api(first, env)
        with closing(api.client):
            job_id = accepted(api, {"url": url}, model=model)
            # No worker serves this model: a cancel is the quickest way to a final state.
            assert api.client.delete(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
        assert route.first_arrived.wait(timeout=60), "the first delivery never arrived"
        [(_, sender)] = first.children
        sender.kill()
        sender.wait()

        api = start_api(second, env)
        with closing(api.client):
            job = webhook_ends(api, job_id, WebhookState.delivered)
        hits = receiver.hits(route)
        assert len(hits) >= 2
        assert {hit.webhook_id for hit in hits} == {f"{job_id}_canceled"}
        assert all(hit.job is not None for hit in hits)
        assert job["webhook"]["attempts"] >= 2 and job["webhook"]["last_status"] == 200
    finally:
        route.release.set()
        for stack in (second, first, redis_stack):
            stack.stop()


@pytest.mark.stack
def test_an_address_refused_at_send_time_fails_the_delivery(
    guarded: Deployment, receiver: Receiver
) -> None:
    """A name checked at submit may point at an internal address by the time it is called:
    the sender checks again and never connects. The job is written as if its webhook's host had
    resolved publicly at submit."""
    url, route = receiver.route()
    job_id = uuid.uuid4().hex
    config = WebhookConfig(url=url, events=[JobStatus.canceled], base_url=guarded.api.url + "/")
    call = Transitions(TTL_S).create(job_id, PARAMS, config)
    with Redis.from_url(guarded.redis_url) as r:
        r.register_script(CREATE)(keys=call.keys, args=call.args)
    assert guarded.api.client.delete(f"/v1/jobs/{job_id}").status_code == 200
    job = webhook_ends(guarded.api, job_id, WebhookState.failed)
    assert (job["webhook"]["attempts"], job["webhook"]["last_status"]) == (1, None)
    assert receiver.hits(route) == []


# ---- refusals at submit ----


@pytest.mark.stack
@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://[::ffff:10.0.0.1]/hook", "private"),
    ],
)
def test_a_non_public_address_is_refused(guarded: Deployment, url: str, kind: str) -> None:
    message = refused(generate(guarded.api, {"url": url}), "webhook.url")
    assert f"a {kind} address" in message


@pytest.mark.stack
def test_an_unresolvable_host_is_refused(guarded: Deployment) -> None:
    message = refused(generate(guarded.api, {"url": "http://nowhere.invalid/"}), "webhook.url")
    assert "does not resolve" in message


@pytest.mark.stack
@pytest.mark.parametrize("url", ["ftp://example.com/hook", "file:///etc/passwd", "example.com"])
def test_only_http_and_https_are_accepted(guarded: Deployment, url: str) -> None:
    refused(generate(guarded.api, {"url": url}), "webhook.url")


@pytest.mark.stack
@pytest.mark.parametrize(
    ("events", "field_name"),
    [(["queued"], "webhook.events.0"), (["done"], "webhook.events.0"), ([], "webhook.events")],
)
def test_event_names_are_checked(guarded: Deployment, events: list[str], field_name: str) -> None:
    hook = {"url": "http://example.com/hook", "events": events}
    refused(generate(guarded.api, hook), field_name)


@pytest.mark.stack
def test_a_webhook_without_a_secret_is_refused(no_secret: Api) -> None:
    message = refused(generate(no_secret, {"url": "http://example.com/hook"}), "webhook")
    assert "not enabled" in message


# ---- the Redis side: the transitions owe deliveries, and claims survive their sender ----

PARAMS = job_params("sd3-scenes", prompt="a small red circle", guidance_scale=2.0, seed=7)
BASE = "http://api.example/"


@pytest.fixture(scope="module")
def r(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    """A Redis of its own: no sender runs on it, so each claim here is the test's."""
    stack = Stack()
    try:
        url = start_redis(stack, tmp_path_factory.mktemp("redis"))
        with Redis.from_url(url, decode_responses=True) as client:
            yield client
    finally:
        stack.stop()


class Scripts:
    def __init__(self, r: Redis) -> None:
        self.r = r
        self.t = Transitions(TTL_S)
        self.create_ = r.register_script(CREATE)
        self.start_ = r.register_script(START)
        self.finish_ = r.register_script(FINISH)
        self.cancel_ = r.register_script(CANCEL)
        self.claim_ = r.register_script(webhooks.CLAIM)
        self.record_ = r.register_script(webhooks.RECORD)
        self.due_ = r.register_script(webhooks.DUE)

    def job(self, *events: JobStatus) -> str:
        job_id = uuid.uuid4().hex
        config = WebhookConfig(url="http://h.example/", events=list(events), base_url=BASE)
        call = self.t.create(job_id, PARAMS, config if events else None)
        self.create_(keys=call.keys, args=call.args)
        return job_id

    def start(self, job_id: str) -> None:
        call = self.t.start(job_id)
        self.start_(keys=call.keys, args=call.args)

    def finish(self, job_id: str, status: JobStatus = JobStatus.succeeded) -> None:
        call = self.t.finish(job_id, status)
        self.finish_(keys=call.keys, args=call.args)

    def cancel(self, job_id: str) -> None:
        call = self.t.cancel(job_id)
        self.cancel_(keys=call.keys, args=call.args)

    def claim(self, delivery: Delivery, lease_s: float = 60, max_attempts: int = 3) -> Any:
        call = webhooks.claim_call(delivery, lease_s, max_attempts)
        return self.claim_(keys=call.keys, args=call.args)

    def record(
        self,
        delivery: Delivery,
        attempt: int,
        state: WebhookState,
        status: int | None,
        delay_s: float = 0,
    ) -> int:
        call = webhooks.record_call(delivery, attempt, state, status, delay_s)
        return int(self.record_(keys=call.keys, args=call.args))

    def fields(self, job_id: str) -> dict[str, str]:
        found: dict[str, str] = self.r.hgetall(keys.job(job_id))  # type: ignore[assignment]
        return found

    def score(self, delivery: Delivery) -> float | None:
        score = self.r.zscore(keys.WEBHOOKS_DUE, delivery.id)
        return None if score is None else float(score)

    def now(self) -> float:
        seconds, micros = self.r.time()
        return float(seconds) + micros / 1e6


@pytest.fixture(scope="module")
def s(r: Redis) -> Scripts:
    return Scripts(r)


def delivered_state(s: Scripts, job_id: str) -> tuple[str | None, str | None, str | None]:
    hook = webhooks.decode_webhook(s.fields(job_id))
    assert hook is not None
    return (
        hook.event and hook.event.value,
        hook.state and hook.state.value,
        None if hook.last_status is None else str(hook.last_status),
    )


@pytest.mark.stack
@pytest.mark.parametrize("final", [JobStatus.succeeded, JobStatus.failed])
def test_finishing_owes_the_delivery_at_the_moment_it_finished(
    s: Scripts, final: JobStatus
) -> None:
    job_id = s.job(*[x for x in JobStatus if x.terminal])
    s.start(job_id)
    assert s.score(Delivery(job_id, JobStatus.running)) is None
    s.finish(job_id, final)
    fields = s.fields(job_id)
    delivery = Delivery(job_id, final)
    assert s.score(delivery) == pytest.approx(float(fields["finished_at"]), abs=1e-3)
    assert delivered_state(s, job_id) == (final.value, "pending", None)
    # A second finish loses, and owes nothing more.
    s.finish(job_id, JobStatus.canceled)
    assert s.score(Delivery(job_id, JobStatus.canceled)) is None


@pytest.mark.stack
def test_cancel_and_start_owe_theirs_and_a_restart_does_not_again(s: Scripts) -> None:
    canceled = s.job(JobStatus.canceled)
    s.cancel(canceled)
    assert s.score(Delivery(canceled, JobStatus.canceled)) is not None

    job_id = s.job(JobStatus.running)
    s.start(job_id)
    running = Delivery(job_id, JobStatus.running)
    assert s.score(running) is not None
    s.r.zrem(keys.WEBHOOKS_DUE, running.id)
    # Started again after its worker died: the webhook has been told already.
    s.start(job_id)
    assert s.score(running) is None


@pytest.mark.stack
def test_a_job_without_a_webhook_owes_nothing(s: Scripts) -> None:
    job_id = s.job()
    s.start(job_id)
    s.finish(job_id)
    assert webhooks.decode_webhook(s.fields(job_id)) is None
    for event in JobStatus:
        assert s.score(Delivery(job_id, event)) is None


@pytest.mark.stack
def test_a_claim_is_exclusive_until_its_lease_ends(s: Scripts) -> None:
    job_id = s.job(JobStatus.succeeded)
    s.start(job_id)
    s.finish(job_id)
    delivery = Delivery(job_id, JobStatus.succeeded)
    assert delivery.id in s.due_(keys=[keys.WEBHOOKS_DUE], args=[1000])

    before = s.now()
    claimed = webhooks.decode_claim(s.claim(delivery, lease_s=60))
    assert claimed is not None and claimed.attempt == 1
    assert claimed.config.base_url == BASE
    assert (s.score(delivery) or 0) >= before + 60
    assert s.claim(delivery) == [Claim.busy]
    assert delivery.id not in s.due_(keys=[keys.WEBHOOKS_DUE], args=[1000])


@pytest.mark.stack
def test_a_dead_senders_claim_falls_due_and_counts(s: Scripts) -> None:
    job_id = s.job(JobStatus.succeeded)
    s.start(job_id)
    s.finish(job_id)
    delivery = Delivery(job_id, JobStatus.succeeded)
    # Lease 0: the sender is gone the moment it claimed.
    for attempt in (1, 2, 3):
        claimed = webhooks.decode_claim(s.claim(delivery, lease_s=0, max_attempts=3))
        assert claimed is not None and claimed.attempt == attempt
    # The last attempt's sender died too: nothing is left to try.
    assert s.claim(delivery, lease_s=0, max_attempts=3) == [Claim.dropped]
    assert s.score(delivery) is None
    assert delivered_state(s, job_id) == ("succeeded", "failed", None)


@pytest.mark.stack
def test_record_delivered_retry_and_failed(s: Scripts) -> None:
    job_id = s.job(JobStatus.succeeded)
    s.start(job_id)
    s.finish(job_id)
    delivery = Delivery(job_id, JobStatus.succeeded)

    s.claim(delivery, lease_s=0)
    before = s.now()
    assert s.record(delivery, 1, WebhookState.pending, 503, delay_s=30) == 1
    assert (s.score(delivery) or 0) >= before + 30
    assert delivered_state(s, job_id) == ("succeeded", "pending", "503")

    s.r.zadd(keys.WEBHOOKS_DUE, {delivery.id: 0})
    s.claim(delivery, lease_s=0)
    # Attempt 1 answering late is superseded by attempt 2: its failure does not count...
    assert s.record(delivery, 1, WebhookState.failed, 400) == 0
    assert delivered_state(s, job_id) == ("succeeded", "pending", "503")
    # ...but a success counts from any attempt.
    assert s.record(delivery, 1, WebhookState.delivered, 204) == 1
    assert delivered_state(s, job_id) == ("succeeded", "delivered", "204")
    assert s.score(delivery) is None
    # Attempt 2 ends after that: the delivery is over.
    assert s.record(delivery, 2, WebhookState.pending, None, delay_s=1) == 0
    assert s.score(delivery) is None


@pytest.mark.stack
def test_a_delivery_of_an_expired_job_is_dropped(s: Scripts) -> None:
    job_id = s.job(JobStatus.canceled)
    s.cancel(job_id)
    delivery = Delivery(job_id, JobStatus.canceled)
    s.r.delete(keys.job(job_id))
    assert s.claim(delivery) == [Claim.dropped]
    assert s.score(delivery) is None
    assert not s.r.exists(keys.job(job_id))  # no keyless record left behind


# ---- pure logic ----


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "non-public"),
        ("192.0.2.1", "private"),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_classification(address: str, kind: str | None) -> None:
    assert refused_address(ipaddress.ip_address(address)) == kind


def test_resolve_checks_every_address() -> None:
    async def check(url: str, allow_private: bool) -> list[str]:
        return await resolve(httpx.URL(url), allow_private)

    assert asyncio.run(check("http://93.184.216.34/", False)) == ["93.184.216.34"]
    assert asyncio.run(check("http://127.0.0.1:8080/", True)) == ["127.0.0.1"]
    with pytest.raises(UnsafeUrl, match="loopback"):
        asyncio.run(check("http://localhost/", False))
    with pytest.raises(Unresolvable):
        asyncio.run(check("https://nowhere.invalid/", True))
    with pytest.raises(UnsafeUrl, match="only http and https"):
        asyncio.run(check("ftp://93.184.216.34/", True))


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (4, 16), (5, 20), (40, 20), (10_000, 20)]:
        for _ in range(50):
            delay = backoff_s(attempt, base_s=2, max_s=20, rng=rng)
            assert ceiling / 2 <= delay <= ceiling, (attempt, delay)


def test_which_answers_are_worth_retrying() -> None:
    for status in (None, 408, 429, 500, 502, 503, 504):
        assert worth_retrying(status), status
    for status in (301, 302, 400, 401, 403, 404, 410, 413, 422):
        assert not worth_retrying(status), status


def test_webhook_request_events() -> None:
    url = "https://example.com/hook"
    assert WebhookRequest.model_validate({"url": url}).events == [
        JobStatus.succeeded,
        JobStatus.failed,
        JobStatus.canceled,
    ]
    twice = WebhookRequest.model_validate({"url": url, "events": ["running", "running"]})
    assert twice.events == [JobStatus.running]
    for events in (["queued"], ["finished"], []):
        with pytest.raises(ValidationError):
            WebhookRequest.model_validate({"url": url, "events": events})


def test_delivery_ids_round_trip() -> None:
    job_id = uuid.uuid4().hex
    for event in JobStatus:
        delivery = Delivery(job_id, event)
        assert delivery.id == f"{job_id}_{event.value}"
        assert Delivery.parse(delivery.id) == delivery


def test_the_stored_webhook_decodes_to_what_get_shows() -> None:
    config = WebhookConfig(url="https://h.example/x", events=[JobStatus.succeeded], base_url=BASE)
    fields = {
        webhooks.CONFIG_FIELD: config.model_dump_json(),
        webhooks.EVENT_FIELD: "succeeded",
        webhooks.STATE_FIELD + "succeeded": "delivered",
        webhooks.ATTEMPTS_FIELD + "succeeded": "2",
        webhooks.LAST_STATUS_FIELD + "succeeded": "200",
    }
    hook = webhooks.decode_webhook(fields)
    assert hook is not None
    assert json.loads(hook.model_dump_json()) == {
        "url": "https://h.example/x",
        "events": ["succeeded"],
        "event": "succeeded",
        "state": "delivered",
        "attempts": 2,
        "last_status": 200,
    }


def test_a_secret_is_needed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.settings import SettingsError, load_settings
    from service.settings import ApiSettings

    monkeypatch.chdir(os.path.dirname(__file__))  # away from any .env of the working tree
    for value in ("secret", "whsec_", "whsec_!!!"):
        monkeypatch.setenv(env_var("webhook_secret"), value)
        with pytest.raises(SettingsError, match="SD3SERVE_WEBHOOK_SECRET"):
            load_settings(ApiSettings)
    monkeypatch.setenv(env_var("webhook_secret"), "")
    assert load_settings(ApiSettings).webhook_secret is None
    monkeypatch.setenv(env_var("webhook_secret"), SECRET)
    secret = load_settings(ApiSettings).webhook_secret
    assert secret is not None and secret.get_secret_value() == SECRET
