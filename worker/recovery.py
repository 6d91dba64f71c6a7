"""Riding out Redis outages, and taking back the jobs of workers that are gone.

Every thread of a worker that talks to Redis reports to one `Outage`, which logs an outage once
when it begins and once when it ends, however many retries it takes. The `Reaper` puts a job
whose worker has stopped beating back at the front of its queue (or finishes it, when it was
canceled or has no retry left), through common.jobstore's REQUEUE.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from redis import Redis, exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from rq.utils import parse_composite_key

from common import jobstore, keys, workers
from common.jobstore import Outcome, Transitions

log = logging.getLogger("sd3serve.worker")

# What a Redis that is down, restarting (loading its data) or failing over raises: worth waiting
# out. Any other error is a fault of the command and is raised.
REDIS_DOWN = (exceptions.ConnectionError, exceptions.TimeoutError, exceptions.ReadOnlyError)
# Waits between retries while Redis is down: doubling from the first to the last.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 4.0
T = TypeVar("T")
# How often a wait looks at whether the worker is asked to stop.
STOP_POLL_S = 0.2
# A Redis that neither answers nor refuses (a network partition) fails a command this soon.
SOCKET_TIMEOUT_S = 5.0


def connect(url: str, *, decode: bool = False) -> Redis:
    """A client whose failing command fails fast: the worker waits outages out itself, at its
    own pace and watching for a stop, so redis-py's retries only cover a connection the restart
    killed (one fresh connection, at once)."""
    return Redis.from_url(
        url,
        decode_responses=decode,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        health_check_interval=30,
    )


class Outage:
    """Whether Redis answers, as this process last found it; logs each outage once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self._back_at = float("-inf")

    def failed(self, error: Exception) -> None:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                log.warning("Redis is unreachable (%s); waiting for it to come back", error)

    def ok(self) -> None:
        with self._lock:
            if self._since is not None:
                log.warning("Redis is back after %.1f s", time.monotonic() - self._since)
                self._since = None
                self._back_at = time.monotonic()

    @property
    def down(self) -> bool:
        return self._since is not None

    def healthy_for(self) -> float:
        """Seconds since Redis last came back: infinite if this process never saw it down."""
        with self._lock:
            return 0.0 if self._since is not None else time.monotonic() - self._back_at


def pause(seconds: float, stopping: Callable[[], bool]) -> None:
    """Sleep, but return early once `stopping` says so."""
    deadline = time.monotonic() + seconds
    while not stopping() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, STOP_POLL_S))


class Abandoned(Exception):
    """The worker is stopping while Redis is away: what it was doing is left to the reaper."""


def never() -> bool:
    return False


def through_outage(
    call: Callable[[], T], outage: Outage, stopping: Callable[[], bool] = never
) -> T:
    """`call`'s result, retried with a growing pause while Redis is down (`outage` hears of
    each failure and of the recovery); Abandoned once `stopping` says so."""
    delay = RETRY_FIRST_S
    while True:
        try:
            result = call()
        except REDIS_DOWN as exc:
            outage.failed(exc)
        else:
            outage.ok()
            return result
        if stopping():
            raise Abandoned()
        pause(delay, stopping)
        delay = min(2 * delay, RETRY_MAX_S)


class Reaper:
    """Takes back the jobs of one model whose worker is gone, on any worker of that model."""

    def __init__(
        self,
        redis: Redis,
        model: str,
        *,
        ttl_s: int,
        silence_s: float,
        outage: Outage,
    ) -> None:
        self.redis = redis
        self.model = model
        self.silence_s = silence_s
        self.outage = outage
        self.transitions = Transitions(ttl_s)
        self._requeue = redis.register_script(jobstore.REQUEUE)

    def candidates(self) -> set[str]:
        """Jobs of the model some worker took: started ones (ours, and RQ's records of runs),
        and ones popped off the queue but not started yet."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(keys.running(self.model))
            pipe.lrange(keys.rq_dequeued(self.model), 0, -1)
            pipe.zrange(keys.rq_started(self.model), 0, -1)
            pipe.hkeys(keys.dequeued(self.model))
            running, popped, started, seen = pipe.execute()
        found: set[str] = set()
        for ids in (running, popped, seen):
            found.update(_text(i) for i in ids)
        found.update(parse_composite_key(_text(member))[0] for member in started)
        return found

    def reap(self) -> dict[str, Outcome]:
        """Take back every job of the model whose worker is gone; returns what became of each.

        Skipped until Redis has answered for a whole silence: right after an outage every
        worker is silent, and the live ones must first get a heartbeat in.
        """
        # Redis first: the caller counts a pass that returns as Redis answering.
        if self._redis_uptime() < self.silence_s or self.outage.healthy_for() < self.silence_s:
            return {}
        done = {}
        for job_id in sorted(self.candidates()):
            outcome = self.requeue(job_id, silence_s=self.silence_s, limbo_s=self.silence_s)
            if outcome is not None:
                done[job_id] = outcome
                log.warning("job %s: its worker is gone; the job is now %s", job_id, outcome)
        return done

    def give_back(self, job_id: str, worker: str) -> None:
        """Put back at the front of the queue a job the worker `worker` popped but never ran (an
        outage came between): at once, since that worker knows it will not run it. Its START,
        which rides the transaction recording the start, may have been applied with the reply
        lost: a job started on `worker` goes back too, that start not counted as an attempt."""
        # Infinite silence: a job another worker started is never taken from it here.
        outcome = self.requeue(job_id, silence_s=workers.FORGET_AFTER_S, limbo_s=-1, giver=worker)
        if outcome is not None:
            log.warning("job %s: taken off the queue before an outage; put back", job_id)

    def requeue(
        self, job_id: str, *, silence_s: float, limbo_s: float, giver: str | None = None
    ) -> Outcome | None:
        call = self.transitions.requeue(
            job_id, self.model, silence_s=silence_s, limbo_s=limbo_s, giver=giver
        )
        return jobstore.decode_requeued(self._requeue(keys=call.keys, args=call.args))

    def _redis_uptime(self) -> float:
        # A fresh process has not seen the outage a Redis restart was; Redis' uptime tells.
        try:
            info = self.redis.info("server")
        except exceptions.ResponseError:  # INFO refused by an ACL: the process's own view must do
            return float("inf")
        return float(info["uptime_in_seconds"])


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
