"""Signed webhooks: checking a request's webhook, and the loop that delivers what is owed.

Deliveries follow the Standard Webhooks specification: a POST of the job, as GET /v1/jobs/{id}
renders it, with `webhook-id` (`<job id>_<event>`, the same on every attempt), `webhook-timestamp`
and `webhook-signature`. Each API process runs one sender; common.webhooks keeps the owed
deliveries in Redis, so they are shared by every process and outlive any of them.

A webhook URL is chosen by the client, so the API must not become its way into the private
network: the host's addresses are checked at submit and again at each attempt (a name may
resolve elsewhere by then), the connection goes to an address that was checked, and redirects
are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import socket
from datetime import UTC, datetime

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import RedisError
from standardwebhooks import Webhook

from common import keys, webhooks
from common.contract import WebhookRequest, WebhookState
from common.webhooks import Delivery, WebhookConfig
from service.errors import InvalidParameter, JobNotFound
from service.routes.deps import LinksAt, job_response
from service.service import GenerationService
from service.settings import ApiSettings

log = logging.getLogger(__name__)

# How often each process looks for due deliveries, and after a failed look (Redis down).
POLL_S = 0.5
ERROR_PAUSE_S = 5.0
# Deliveries one process sends at once; the rest wait in Redis for it or another process.
MAX_IN_FLIGHT = 32
# A claim outlasts the POST's timeout by this much, for rendering the job and recording the
# outcome, so a live sender is never taken for dead; a dead one's delivery is re-sent after it.
LEASE_MARGIN_S = 5.0
USER_AGENT = "sd3-serve-webhooks"


class UnsafeUrl(ValueError):
    """A webhook URL the service will not call; the message says why."""


class Unresolvable(UnsafeUrl):
    """The URL's host has no address now; at send time, a failure worth retrying."""


def refused_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """What kind of non-public address this is, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind, hit in (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        # Shared address space (CGNAT), 6to4 relays, documentation ranges and the like.
        ("non-public", not address.is_global),
    ):
        if hit:
            return kind
    return None


async def resolve(url: httpx.URL, allow_private: bool) -> list[str]:
    """The addresses to connect to for `url`, each checked; UnsafeUrl when none may be used."""
    if url.scheme not in ("http", "https"):
        raise UnsafeUrl(f"only http and https URLs are called, not {url.scheme!r}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            url.host, port, type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolvable(f"the host {url.host!r} does not resolve: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        # Every address, not just the first: a name may mix public and internal ones.
        for address in addresses:
            if kind := refused_address(ipaddress.ip_address(address)):
                raise UnsafeUrl(
                    f"the host {url.host!r} resolves to {address}, a {kind} address; webhooks "
                    "only call public addresses"
                )
    if not addresses:
        raise Unresolvable(f"the host {url.host!r} has no address")
    return addresses


async def accept_webhook(
    hook: WebhookRequest, settings: ApiSettings, base_url: str
) -> WebhookConfig:
    """The request's webhook as the job stores it, or InvalidParameter saying why not."""
    if settings.webhook_secret is None:
        raise InvalidParameter(
            "webhooks are not enabled on this service (it has no webhook secret)", field="webhook"
        )
    url = str(hook.url)
    try:
        async with asyncio.timeout(settings.webhook_timeout_s):
            await resolve(httpx.URL(url), settings.webhook_allow_private)
    except TimeoutError:
        raise InvalidParameter(
            f"the host {hook.url.host!r} did not resolve in time", field="webhook.url"
        ) from None
    except UnsafeUrl as exc:
        raise InvalidParameter(str(exc), field="webhook.url") from None
    return WebhookConfig(url=url, events=hook.events, base_url=base_url)


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Wait after failed attempt `attempt` (1-based): doubling from `base_s` up to `max_s`, the
    upper half of it at random, so receivers coming back up are not hit by every sender at once."""
    ceiling = min(max_s, base_s * 2.0 ** min(attempt - 1, 60))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def worth_retrying(status: int | None) -> bool:
    """A POST with no answer (None) or this status may succeed later; any other failure is final.

    408 and 429 say "not now"; other 4xx say the request itself is wrong, and a 3xx is final
    because redirects are not followed.
    """
    return status is None or status in (408, 429) or status >= 500


class WebhookSender:
    """One API process's share of the owed deliveries: claimed, POSTed, recorded."""

    def __init__(self, app: FastAPI, redis: Redis, settings: ApiSettings) -> None:
        if settings.webhook_secret is None:
            raise ValueError("a webhook sender needs a secret")
        self.app = app
        self.redis = redis
        self.settings = settings
        self.signer = Webhook(settings.webhook_secret.get_secret_value())
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S
        self.rng = random.Random()
        # Proxies from the environment are not used: the connection must go to the checked
        # address. No connection is kept either: one made for a host name's TLS certificate
        # must not carry a POST meant for another name on the same address.
        self.client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=None,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._due = redis.register_script(webhooks.DUE)
        self._claim = redis.register_script(webhooks.CLAIM)
        self._record = redis.register_script(webhooks.RECORD)
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None

    @classmethod
    def start(cls, app: FastAPI, redis: Redis, settings: ApiSettings) -> WebhookSender | None:
        """A running sender, or None where webhooks are off (no secret, so none are owed)."""
        if settings.webhook_secret is None:
            return None
        sender = cls(app, redis, settings)
        sender._loop = asyncio.create_task(sender._run(), name="webhook-sender")
        return sender

    async def stop(self) -> None:
        """Stop claiming; let POSTs under way end within their timeout, then cancel the rest
        (their deliveries fall due again for another process when their lease ends)."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        pending = list(self._in_flight.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.settings.webhook_timeout_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.client.aclose()

    async def _run(self) -> None:
        while True:
            pause = POLL_S
            # The loop must outlive a Redis outage or a bug in one round.
            try:
                await self.dispatch()
            except RedisError as exc:
                log.warning("webhook sender: Redis unavailable: %s", exc)
                pause = ERROR_PAUSE_S
            except Exception:
                log.exception("webhook sender: looking for due deliveries failed")
                pause = ERROR_PAUSE_S
            await asyncio.sleep(pause)

    async def dispatch(self) -> None:
        """Start a delivery task for each due delivery this process has room for."""
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return
        due: list[str] = await self._due(keys=[keys.WEBHOOKS_DUE], args=[room])
        for delivery_id in due:
            # Due while still ours: its lease ran out under a slow attempt that will record it.
            if delivery_id in self._in_flight:
                continue
            task = asyncio.create_task(self._deliver(delivery_id), name=delivery_id)
            self._in_flight[delivery_id] = task
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(task.get_name(), None)

    async def _deliver(self, delivery_id: str) -> None:
        try:
            delivery = Delivery.parse(delivery_id)
        except ValueError:
            log.error("webhook sender: dropping malformed delivery id %r", delivery_id)
            await self.redis.zrem(keys.WEBHOOKS_DUE, delivery_id)
            return
        try:
            call = webhooks.claim_call(delivery, self.lease_s, self.settings.webhook_max_attempts)
            claimed = webhooks.decode_claim(await self._claim(keys=call.keys, args=call.args))
            if claimed is None:
                return
            body = await self._render(delivery.job_id, claimed.config.base_url)
            if body is None:
                return  # expired since the claim; the next claim drops the delivery
            try:
                status = await self._attempt(claimed.config.url, delivery, body)
            except UnsafeUrl as exc:
                # Checked at submit, refused now: the name has been pointed elsewhere since.
                log.warning("webhook %s refused: %s", delivery.id, exc)
                await self._conclude(delivery, claimed.attempt, None, final=True)
                return
            await self._conclude(delivery, claimed.attempt, status)
        except Exception:
            # Left claimed: it falls due again when the lease ends, its attempt counted.
            log.exception("webhook sender: delivery %s failed unexpectedly", delivery_id)

    async def _render(self, job_id: str, base_url: str) -> str | None:
        service: GenerationService = self.app.state.service
        try:
            # The job's own webhook, set by its owner: no key's view to check it against.
            view = await service.get(job_id, owner=None)
        except JobNotFound:
            return None
        return job_response(view, LinksAt(self.app, base_url), service).model_dump_json()

    async def _attempt(self, url: str, delivery: Delivery, body: str) -> int | None:
        """The receiver's HTTP status; None when it gave none in time. A refused address raises
        UnsafeUrl."""
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                return await self._post(httpx.URL(url), delivery, body)
        except (Unresolvable, httpx.HTTPError, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            log.info("webhook %s to %s: no answer (%s)", delivery.id, url, reason)
            return None

    async def _post(self, url: httpx.URL, delivery: Delivery, body: str) -> int:
        addresses = await resolve(url, self.settings.webhook_allow_private)
        sent_at = datetime.now(UTC)
        headers = {
            "webhook-id": delivery.id,
            "webhook-timestamp": str(math.floor(sent_at.timestamp())),
            "webhook-signature": self.signer.sign(delivery.id, sent_at, body),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            # The URL names an address; the receiver still sees the host it was given.
            "host": url.netloc.decode("ascii"),
        }
        # TLS still verifies the certificate against the host name, not the address.
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        for i, address in enumerate(addresses):
            try:
                async with self.client.stream(
                    "POST",
                    url.copy_with(host=address),
                    content=body.encode(),
                    headers=headers,
                    extensions=extensions,
                ) as response:
                    # The body is never read: a receiver cannot make the API buffer anything.
                    return response.status_code
            except httpx.ConnectError:
                if i == len(addresses) - 1:
                    raise
        raise AssertionError("resolve() returns at least one address")

    async def _conclude(
        self, delivery: Delivery, attempt: int, status: int | None, final: bool = False
    ) -> None:
        delay_s = 0.0
        if status is not None and 200 <= status < 300:
            state = WebhookState.delivered
        elif not final and worth_retrying(status) and attempt < self.settings.webhook_max_attempts:
            state = WebhookState.pending
            delay_s = backoff_s(
                attempt,
                self.settings.webhook_backoff_s,
                self.settings.webhook_backoff_max_s,
                self.rng,
            )
        else:
            state = WebhookState.failed
        log.info(
            "webhook %s attempt %d: %s -> %s", delivery.id, attempt, status or "no answer", state
        )
        call = webhooks.record_call(delivery, attempt, state, status, delay_s)
        await self._record(keys=call.keys, args=call.args)
