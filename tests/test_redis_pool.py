"""service.redis_pool.BoundedConnectionPool against a real redis-server: the bound, the wait,
and no slot lost to a failure."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from redis._parsers import Encoder
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.connection import HiredisRespSerializer as Hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.dev import Stack, free_port, start_redis
from service.redis_pool import BoundedConnectionPool

NAME = "bounded-pool-test"
HOLD_S = 0.3  # how long each BLPOP holds its connection
FROZEN_TIMEOUT_S = 0.5


@asynccontextmanager
async def bounded(url: str, **options: Any) -> AsyncIterator[tuple[BoundedConnectionPool, Redis]]:
    """A pool under test and a client on it, both closed after."""
    pool = BoundedConnectionPool.from_url(url, **options)
    redis = Redis(connection_pool=pool)
    try:
        yield pool, redis
    finally:
        await redis.aclose()
        await pool.aclose()


async def blocked(redis_url: str) -> None:
    """Return once a connection of the pool under test is blocked in BLPOP (CLIENT LIST)."""
    async with Redis.from_url(redis_url, decode_responses=True) as other:
        while not any(
            client["name"] == NAME and client["cmd"] == "blpop"
            for client in await other.client_list()
        ):
            await asyncio.sleep(0.01)


def test_callers_past_the_bound_wait_for_a_connection(redis_url: str) -> None:
    bound, callers = 3, 10

    async def go() -> tuple[list[object], int]:
        pool = BoundedConnectionPool.from_url(
            redis_url, max_connections=bound, timeout=30, client_name=NAME
        )
        redis = Redis(connection_pool=pool)
        most = 0

        async def watch() -> None:
            nonlocal most
            async with Redis.from_url(redis_url, decode_responses=True) as other:
                while True:
                    listed = await other.client_list()
                    most = max(most, sum(1 for c in listed if c["name"] == NAME))
                    await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        try:
            # Each holds its connection until BLPOP times out on an empty list.
            results = await asyncio.gather(
                *(redis.blpop([f"empty:{i}"], timeout=HOLD_S) for i in range(callers))
            )
        finally:
            watcher.cancel()
            await redis.aclose()
            await pool.aclose()
        return list(results), most

    results, most = asyncio.run(go())
    assert results == [None] * callers  # every caller got a connection in the end
    assert most == bound  # the watcher saw the bound reached, never passed


def test_a_caller_finding_no_connection_in_time_gets_a_connection_error(redis_url: str) -> None:
    async def go() -> None:
        pool = BoundedConnectionPool.from_url(
            redis_url, max_connections=1, timeout=0.05, client_name=NAME
        )
        redis = Redis(connection_pool=pool)
        try:

            async def hold() -> object:
                return await redis.blpop(["empty"], timeout=1)

            holder = asyncio.create_task(hold())
            await blocked(redis_url)  # the holder has the only connection
            with pytest.raises(RedisConnectionError, match="No connection available"):
                await redis.ping()
            assert await holder is None
            assert await redis.ping()  # its slot came back
        finally:
            await redis.aclose()
            await pool.aclose()

    asyncio.run(go())


def test_failed_connects_give_their_slot_back() -> None:
    dead = f"redis://127.0.0.1:{free_port()}"  # nothing listens there

    async def go() -> None:
        async with bounded(dead, max_connections=1, timeout=0.5) as (_, redis):
            for _ in range(3):  # a leaked slot would turn the second into a wait, then this:
                with pytest.raises(RedisConnectionError) as caught:
                    await redis.ping()
                assert "No connection available" not in str(caught.value)

    asyncio.run(go())


def test_a_connection_given_back_with_a_reply_unread_is_not_handed_out_so(redis_url: str) -> None:
    # redis-py's own pool fails this: its check is skipped under its default "auto"
    # maintenance notifications.
    async def go() -> None:
        options = {"max_connections": 1, "timeout": 0.5, "decode_responses": True}
        async with bounded(redis_url, **options) as (pool, redis):
            connection = await pool.get_connection()
            await connection.send_command("ECHO", "stale")  # its reply is never read
            while not await connection.can_read():  # until the reply has arrived
                await asyncio.sleep(0.001)
            await pool.release(connection)
            assert await redis.echo("fresh") == "fresh"  # not the stale reply
            assert await redis.echo("again") == "again"

    asyncio.run(go())


def test_one_connection_serves_callers_in_turn(redis_url: str) -> None:
    async def go() -> int:
        options = {"max_connections": 4, "timeout": 0.5, "client_name": NAME}
        async with bounded(redis_url, **options) as (_, redis):
            for i in range(5):
                await redis.set(f"k{i}", i)
            async with Redis.from_url(redis_url, decode_responses=True) as other:
                return sum(1 for c in await other.client_list() if c["name"] == NAME)

    assert asyncio.run(go()) == 1


def test_a_reply_inside_the_socket_timeout_leaves_its_connection_open_past_it(
    redis_url: str,
) -> None:
    """The read's timer stops with the reply: a reply that took most of the socket timeout,
    then a wait past it, and the same connection (the same client id in Redis) still serves,
    its timeout as configured; a write over the socket buffer's high-water mark, which may
    wait, goes through on it too."""

    async def go() -> None:
        options = {"max_connections": 1, "timeout": 0.5, "socket_timeout": FROZEN_TIMEOUT_S}
        async with bounded(redis_url, **options) as (pool, redis):
            await redis.delete("empty", "big")
            client_id = await redis.client_id()
            assert await redis.blpop(["empty"], timeout=FROZEN_TIMEOUT_S * 0.6) is None
            (connection,) = pool._available_connections
            await asyncio.sleep(FROZEN_TIMEOUT_S * 1.5)  # past where a timer left running fires
            assert await redis.client_id() == client_id
            assert pool._available_connections == [connection]
            assert connection.is_connected
            assert connection.socket_timeout == FROZEN_TIMEOUT_S
            assert await redis.set("big", b"x" * (1 << 20))
            assert await redis.strlen("big") == 1 << 20
            assert await redis.client_id() == client_id

    asyncio.run(go())


VALUES: list[bytes | str | int | float] = [
    b"\x00\xff\r\n",
    "é☃",
    12345678901234567890,
    -7,
    0.1,
    1e20,
    -0.0,
    1 / 3,
    "",
    b"x" * 100_000,  # redis-py's own packing cuts it into chunks
]


def test_its_connections_pack_commands_as_redis_py_does_and_redis_reads_them(
    redis_url: str,
) -> None:
    async def go() -> list[Any]:
        async with bounded(redis_url, max_connections=2, timeout=0.5) as (pool, redis):
            connection = await pool.get_connection()
            try:
                # Packed by hiredis, not by redis-py's asyncio connection, in Python.
                assert isinstance(getattr(connection.pack_command, "__self__", None), Hiredis)
                python = Connection()
                for command in [("SET", "k", value) for value in VALUES] + [
                    ("CONFIG GET", "maxmemory"),
                    ("EVALSHA", "f" * 40, 2, "a", "b", *VALUES),
                ]:
                    packed = b"".join(connection.pack_command(*command))
                    assert packed == b"".join(python.pack_command(*command)), command
            finally:
                await pool.release(connection)
            for i, value in enumerate(VALUES):
                await redis.set(f"packed:{i}", value)
            return [await redis.get(f"packed:{i}") for i in range(len(VALUES))]

    # What redis-py's own encoder makes of each value, without hiredis.
    encoder = Encoder("utf-8", "strict", decode_responses=False)  # type: ignore[no-untyped-call]
    assert asyncio.run(go()) == [encoder.encode(value) for value in VALUES]  # type: ignore[no-untyped-call]


def test_a_frozen_redis_times_the_write_and_the_read_out_and_the_pool_recovers(
    tmp_path: Path,
) -> None:
    """A write that cannot finish (a stopped server's socket buffers full) and a read that
    gets no reply each end in redis-py's TimeoutError within the socket timeout, and drop the
    connection; once the server runs again, the pool serves commands, and the write that
    timed out never runs."""
    stack = Stack()
    try:
        url = start_redis(stack, tmp_path, dict(os.environ))
        server = next(proc for name, proc in stack.children if name == "redis")

        async def go() -> None:
            options = {"max_connections": 1, "timeout": 0.5, "socket_timeout": FROZEN_TIMEOUT_S}
            async with bounded(url, **options) as (pool, redis):
                assert await redis.ping()  # connected before the server stops
                server.send_signal(signal.SIGSTOP)
                try:
                    with pytest.raises(RedisTimeoutError, match="writing"):
                        await redis.set("big", b"x" * (64 << 20))  # past every buffer
                    assert not pool._available_connections[0].is_connected  # dropped
                    with pytest.raises(RedisTimeoutError, match="reading"):
                        await redis.ping()  # a fresh connect, queued in the kernel
                finally:
                    server.send_signal(signal.SIGCONT)
                assert await redis.ping()
                # Aborted, not closed: the rest of the write was dropped, not sent late.
                assert await redis.exists("big") == 0

        asyncio.run(go())
    finally:
        stack.stop()
