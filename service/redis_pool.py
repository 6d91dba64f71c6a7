"""The API's Redis connection pool: bounded, a caller past the bound waiting for a connection.

redis-py's BlockingConnectionPool does that with an asyncio.Condition taken on every get and
every release, and a timeout scope around every get: 57,000 instructions a command more than
its plain pool (counted under callgrind), paid by every request whether or not any caller
waits. Here a semaphore holds the bound: a free slot is taken without a wait, and only a
caller who finds none starts a timeout.

The hand-over itself is the plain pool's, on its own containers (so its `disconnect` and
`aclose` see every connection), less what this service does not use and every command paid
for: an asyncio.Lock around code with no await in it, four calls into redis-py's
OpenTelemetry recorder, and an event dispatched on release for streaming credential
providers. POST /v1/generate runs 6.5 % fewer instructions for the two changes
(bench/instructions.py: 4.5 % for this one).

Its connections pack commands with hiredis, as redis-py's synchronous ones do by default:
4.7 % fewer instructions again. They keep redis-py's socket timeout more cheaply: a write that
cannot wait needs no timeout, any other runs in one timeout scope (redis-py runs it as a task
of its own under asyncio.wait_for, about 20 µs of CPU a command here), and a read is bounded
by one timer that aborts the connection (redis-py opens a timeout scope per read). The two
scopes a command cost were 22 % of a PING's instructions and 3.4 % of a POST's.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from types import MethodType
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

_HIREDIS = HiredisRespSerializer()


class BoundedConnectionPool(ConnectionPool):
    """At most `max_connections` connections in use; a caller past them waits up to `timeout`
    seconds for one to be released, then gets redis-py's ConnectionError, as from
    BlockingConnectionPool. Each connection in use holds one slot."""

    def __init__(self, *, timeout: float, max_connections: int, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max_connections)

    def make_connection(self) -> AbstractConnection:
        connection: AbstractConnection = super().make_connection()  # type: ignore[no-untyped-call]
        if HIREDIS_AVAILABLE:
            # redis-py's asyncio connections pack each command in Python; its synchronous ones
            # pack them with hiredis, byte for byte the same. Here the asyncio ones do too.
            connection.pack_command = _HIREDIS.pack  # type: ignore[method-assign,assignment]
        connection.send_packed_command = MethodType(_send_within_timeout, connection)  # type: ignore[method-assign]
        connection.read_response = MethodType(_read_within_timeout, connection)  # type: ignore[method-assign]
        return connection

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if self._slots.locked():
            try:
                async with asyncio.timeout(self.timeout):
                    await self._slots.acquire()
            except TimeoutError as err:
                raise RedisConnectionError("No connection available.") from err
        else:
            await self._slots.acquire()  # returns at once: a slot is free
        try:
            connection = self._available_connections.pop()
        except IndexError:
            connection = self.make_connection()
        self._in_use_connections.add(connection)
        try:
            await connection.connect()  # type: ignore[no-untyped-call]  # new, or lost its server
            # Bytes waiting on an idle connection are a reply nobody read (this service speaks
            # RESP2 and takes no push messages): handed out, it would answer the next command.
            # redis-py's own check is skipped whenever maintenance notifications are "auto",
            # its default.
            if await connection.can_read():
                await connection.disconnect()
                await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        self._in_use_connections.remove(connection)  # a connection released twice raises
        try:
            if connection.should_reconnect():  # type: ignore[no-untyped-call]  # maintenance
                await connection.disconnect()
        finally:
            self._available_connections.append(connection)
            self._slots.release()


async def _send_within_timeout(
    connection: AbstractConnection,
    command: bytes | str | Iterable[bytes],
    check_health: bool = True,
) -> None:
    """redis-py's send, its socket timeout kept as one timeout scope around all of it, where
    the send could wait at all.

    With a socket timeout set, redis-py writes under asyncio.wait_for, which makes a task of
    the write; with none, it writes in place, and so it does here. A send that neither
    connects, nor checks the connection's health (a PING), nor fills the socket's buffer past
    its high-water mark hands its bytes to the transport and returns without waiting, so it
    needs no timeout (each scope cost about 27,000 instructions). Any other runs inside one:
    on expiry the caller gets redis-py's TimeoutError, as from its own, and the connection is
    aborted: redis-py only closes it, and a close sends what is still buffered once the server
    reads again, so a command its caller was told had failed could still run, seconds later.
    """
    timeout = connection.socket_timeout
    if not timeout:
        await AbstractConnection.send_packed_command(connection, command, check_health)
        return
    writer = connection._writer  # None until connected, and then nothing is buffered
    connection.socket_timeout = None  # for the send only: the connection is this caller's
    try:
        if writer is not None and _sends_at_once(
            connection, writer.transport, command, check_health
        ):
            await AbstractConnection.send_packed_command(connection, command, check_health)
            return
        async with asyncio.timeout(timeout):
            await AbstractConnection.send_packed_command(connection, command, check_health)
    except TimeoutError:
        if writer is not None:
            writer.transport.abort()
        raise RedisTimeoutError("Timeout writing to socket") from None
    finally:
        connection.socket_timeout = timeout


def _sends_at_once(
    connection: AbstractConnection,
    transport: asyncio.WriteTransport,
    command: bytes | str | Iterable[bytes],
    check_health: bool,
) -> bool:
    """Whether redis-py's send of `command` returns without waiting: no health check due, and
    the transport's buffer stays under its high-water mark with all of it added (past the mark
    the transport pauses, and the send waits for it to drain)."""
    if transport.is_closing():
        return False
    interval = connection.health_check_interval
    if (
        check_health
        and interval
        and asyncio.get_running_loop().time() > connection.next_health_check
    ):
        return False
    if isinstance(command, bytes):
        size = len(command)
    elif isinstance(command, list):
        size = sum(map(len, command))
    else:
        return False  # a str (its encoded size differs) or an iterator: sized only once sent
    return transport.get_write_buffer_size() + size <= transport.get_write_buffer_limits()[1]


async def _read_within_timeout(
    connection: AbstractConnection,
    disable_decoding: bool = False,
    timeout: float | None = None,
    *,
    disconnect_on_error: bool = True,
    push_request: bool | None = False,
) -> Any:
    """redis-py's read, its socket timeout kept by one timer that aborts the connection.

    redis-py reads a reply under a timeout scope (about 27,000 instructions a command); a timer
    is a small part of that. On expiry the connection is aborted, which ends the read, and the
    caller gets redis-py's TimeoutError, as from its own. A read given its own `timeout` (a
    blocking command's) is redis-py's as it is.
    """
    limit = connection.socket_timeout
    writer = connection._writer
    if timeout is not None or not limit or writer is None:
        return await AbstractConnection.read_response(
            connection,
            disable_decoding,
            timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )
    expired: list[bool] = []
    timer = asyncio.get_running_loop().call_later(limit, _expire, writer.transport, expired)
    try:
        # math.inf: redis-py's own "no timeout" for this read; the timer keeps it.
        return await AbstractConnection.read_response(
            connection,
            disable_decoding,
            math.inf,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )
    except RedisConnectionError:
        if expired:
            raise RedisTimeoutError(f"Timeout reading from {connection._host_error()}") from None
        raise
    finally:
        timer.cancel()
        if expired:  # the reply came as the timer fired: the connection is aborted all the same
            await connection.disconnect(nowait=True)


def _expire(transport: asyncio.BaseTransport, expired: list[bool]) -> None:
    expired.append(True)
    transport.abort()  # type: ignore[attr-defined]
