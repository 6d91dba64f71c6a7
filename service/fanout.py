"""One reader of job event streams per API process, handing events to every waiting client.

A blocking XREAD per client holds a Redis connection for as long as the client waits, so a
hundred SSE or `Prefer: wait` clients used to drain the pool and lock every other request out.
Here a single task reads every watched job's stream in one XREAD on its own connection and
fans the entries out to in-process queues: clients hold no connection, however many there are.

A new subscription must be read at once, even while the reader is blocked on the streams it
already had. The reader therefore also reads a small per-process wake stream from the last
entry it saw: a subscriber appends to it after registering, so the reader returns (or never
blocks) whether the append lands before or during its XREAD.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common import jobstore, keys
from common.contract import JobStatus
from service.errors import TooManyStreams
from service.store import EventEntry

log = logging.getLogger(__name__)

# Well inside the reader connection's socket timeout; an idle reader wakes this often.
BLOCK_MS = 2000
READ_COUNT = 500
READ_MARGIN_S = 5
# The wake stream only needs its newest entries; it expires when its process is gone.
WAKE_MAXLEN = 16
WAKE_TTL_S = 60
RETRY_MAX_S = 5.0
STREAMS_RETRY_AFTER_S = 5


def is_terminal(kind: str, payload: dict[str, object]) -> bool:
    return kind == "status" and JobStatus(str(payload["status"])).terminal


@dataclass
class _Watched:
    """One job some client waits on: what was read of it so far, and who is waiting."""

    cursor: str = "0"
    history: list[EventEntry] = field(default_factory=list)
    ended: bool = False
    queues: set[asyncio.Queue[EventEntry]] = field(default_factory=set)


class EventHub:
    def __init__(self, redis_url: str, max_streams: int, block_ms: int = BLOCK_MS) -> None:
        # A connection of its own: the blocking read must never wait for a pooled connection.
        # A read taking well past `block_ms` means a dead connection, to be dropped and redialled.
        self.redis = Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_timeout=block_ms / 1000 + READ_MARGIN_S,
            single_connection_client=True,
        )
        # Wakes go out on a second connection, one at a time, coalesced: a burst of new
        # subscriptions costs a few appends, not a connection each.
        self._waker_redis = Redis.from_url(redis_url, decode_responses=True)
        self._wake_wanted = False
        self._waker: asyncio.Task[None] | None = None
        self.max_streams = max_streams
        self.block_ms = block_ms
        self.wake_key = keys.wake_stream(uuid.uuid4().hex)
        self._wake_cursor = "0"
        self._watched: dict[str, _Watched] = {}
        self._streams = 0
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def open_streams(self) -> int:
        return self._streams

    def has_room(self) -> bool:
        return self._streams < self.max_streams

    def check_room(self) -> None:
        """Raise TooManyStreams when this process already holds `max_streams` subscriptions."""
        if not self.has_room():
            raise TooManyStreams(
                f"this API process already streams {self._streams} jobs, its limit; "
                "retry shortly or poll GET /v1/jobs/{id}",
                retry_after_s=STREAMS_RETRY_AFTER_S,
            )

    @asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[asyncio.Queue[EventEntry]]:
        """A queue of the job's events from its first, fed until its final state.

        Callers check `check_room` first, where a refusal can still be an HTTP answer; the
        few streams admitted between that check and this call are not refused here.
        """
        queue: asyncio.Queue[EventEntry] = asyncio.Queue()
        watched = self._watched.get(job_id)
        fresh = watched is None
        if watched is None:
            watched = self._watched[job_id] = _Watched()
        for entry in watched.history:  # a late subscriber replays what was already read
            queue.put_nowait(entry)
        watched.queues.add(queue)
        self._streams += 1
        try:
            self._ensure_reader()
            if fresh:
                self._request_wake()
            yield queue
        finally:
            self._streams -= 1
            watched.queues.discard(queue)
            if not watched.queues and self._watched.get(job_id) is watched:
                del self._watched[job_id]

    async def close(self) -> None:
        # redis-py does not give up a blocking read when its task is canceled; it waits out the
        # block. So the reader is woken, sees `_closing` and returns; cancel is the fallback.
        self._closing = True
        if self._reader is not None and not self._reader.done():
            self._request_wake()
            with suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), READ_MARGIN_S)
        for task in (self._reader, self._waker):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
        self._reader = self._waker = None
        await self.redis.aclose()
        await self._waker_redis.aclose()

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_forever(), name="event-hub")

    def _request_wake(self) -> None:
        # Set before the check: a waker mid-append appends once more, after every new
        # subscription, so the reader always rebuilds its stream list after the last of them.
        self._wake_wanted = True
        if self._waker is None or self._waker.done():
            self._waker = asyncio.create_task(self._wake_loop(), name="event-hub-wake")

    async def _wake_loop(self) -> None:
        while self._wake_wanted:
            self._wake_wanted = False
            try:
                async with self._waker_redis.pipeline(transaction=False) as pipe:
                    pipe.xadd(self.wake_key, {"w": "1"}, maxlen=WAKE_MAXLEN, approximate=True)
                    pipe.expire(self.wake_key, WAKE_TTL_S)
                    await pipe.execute()
            except RedisError:
                # The reader picks the new job up on its next round, within block_ms.
                log.warning("could not wake the event reader", exc_info=True)

    async def _read_forever(self) -> None:
        delay = 0.1
        while not self._closing:
            try:
                await self._read_once()
                delay = 0.1
            except RedisError as exc:
                log.warning("event reader: Redis unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    async def _read_once(self) -> None:
        streams = {
            keys.events(job_id): watched.cursor
            for job_id, watched in self._watched.items()
            if not watched.ended
        }
        streams[self.wake_key] = self._wake_cursor
        reply: list[tuple[str, list[tuple[str, dict[str, str]]]]] | None
        reply = await self.redis.xread(streams, block=self.block_ms, count=READ_COUNT)  # type: ignore[arg-type,assignment]
        for stream, items in reply or []:
            if stream == self.wake_key:
                self._wake_cursor = items[-1][0]
                continue
            self._deliver(keys.job_id_of_events(stream), items)

    def _deliver(self, job_id: str, items: list[tuple[str, dict[str, str]]]) -> None:
        watched = self._watched.get(job_id)
        if watched is None:  # every client left while the read was in flight
            return
        for entry_id, fields in items:
            kind, payload = jobstore.decode_event(fields)
            entry = (entry_id, kind, payload)
            watched.history.append(entry)
            watched.cursor = entry_id
            for queue in watched.queues:
                queue.put_nowait(entry)
            if is_terminal(kind, payload):
                watched.ended = True
                break
