"""RQ's enqueue recorded once per model and replayed per job (service.rq_recording), against a
real redis-server and RQ itself. That RQ reads a replayed job as its own, once SUBMIT has run
the commands, is tests/test_admission.py's."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from redis import Redis
from rq.utils import utcformat

from service.queue import JobQueue
from service.rq_recording import (
    TIME_FIELDS,
    EnqueueClock,
    EnqueueTemplate,
    RecordedCommands,
    Recording,
)

MODEL = "m"


@pytest.fixture
def raw(redis_url: str) -> Iterator[Redis]:
    with Redis.from_url(redis_url) as redis:
        redis.flushdb()
        yield redis


def test_a_replayed_enqueue_is_what_rq_records_for_that_job_bar_the_time(raw: Redis) -> None:
    queue = JobQueue(raw, job_timeout_s=60, ttl_s=3600)
    queue.enqueue_commands(uuid.uuid4().hex, MODEL)  # the template is made here
    template = queue._templates[MODEL]
    assert template is not None, "RQ's enqueue did not replay"

    job_id = uuid.uuid4().hex
    own = queue._record(job_id, MODEL)
    assert template.fill(job_id, own.times) == own.commands
    # With the times of now, as RQ formats them: the bytes differ in the time fields only.
    replayed = queue.enqueue_commands(job_id, MODEL)
    assert replayed.sizes == own.commands.sizes
    times = [
        range(found.start(), found.end())
        for value in own.times.values()
        for found in re.finditer(re.escape(value.encode()), own.commands.data)
    ]
    pairs = zip(replayed.data, own.commands.data, strict=True)
    differ = [i for i, (mine, rqs) in enumerate(pairs) if mine != rqs]
    assert differ and all(any(i in span for span in times) for i in differ)


def recording(job_id: str, data: bytes, created: str, enqueued: str) -> Recording:
    return Recording(
        RecordedCommands("2 7 99", data),
        job_id,
        {"created_at": created, "enqueued_at": enqueued},
    )


T1, T2 = "2026-11-30T05:00:00.000001Z", "2026-11-30T05:00:00.000002Z"
T3, T4 = "2026-11-30T06:00:00.000003Z", "2026-11-30T06:00:00.000004Z"


def test_a_recording_with_a_part_of_its_own_is_not_replayed() -> None:
    a, b = "a" * 32, "b" * 32
    # A value that changes from job to job besides the id and times: no template.
    first = recording(a, f"HSET k{a} {T1} {T2} n1".encode(), T1, T2)
    second = recording(b, f"HSET k{b} {T3} {T4} n2".encode(), T3, T4)
    assert EnqueueTemplate.of(first, second) is None
    # Without it, the same recordings replay each other.
    first = recording(a, f"HSET k{a} {T1} {T2} n".encode(), T1, T2)
    second = recording(b, f"HSET k{b} {T3} {T4} n".encode(), T3, T4)
    template = EnqueueTemplate.of(first, second)
    assert template is not None
    assert template.fill(b, second.times) == second.commands


def test_a_template_refuses_values_that_would_change_the_sizes() -> None:
    a, b = "a" * 32, "b" * 32
    first = recording(a, f"{a}{T1}{T2}".encode(), T1, T2)
    second = recording(b, f"{b}{T3}{T4}".encode(), T3, T4)
    template = EnqueueTemplate.of(first, second)
    assert template is not None
    assert template.fill("short", second.times) is None
    assert template.fill(b, dict.fromkeys(TIME_FIELDS, "2026")) is None


def test_equal_times_cannot_be_told_apart_so_no_template() -> None:
    a, b = "a" * 32, "b" * 32
    first = recording(a, f"{a}{T1}".encode(), T1, T1)
    second = recording(b, f"{b}{T3}".encode(), T3, T3)
    assert EnqueueTemplate.of(first, second) is None


def test_the_times_are_rqs_format_of_now() -> None:
    times = EnqueueClock().times()
    assert set(times) == set(TIME_FIELDS)
    assert len(set(times.values())) == 1
    at = datetime.strptime(times["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(at - datetime.now(UTC)) < timedelta(seconds=5)


def test_the_clock_formats_each_time_as_rq_does_across_seconds_and_back() -> None:
    clock = EnqueueClock()
    base = 1_790_000_000 * 10**9
    instants = [
        base,
        base + 1_000,  # one microsecond on, the same second
        base + 999_999_999,  # the last microsecond of that second
        base + 10**9,  # the next second
        base + 10**9 + 123_456_789,
        base + 123,  # back into the first second (the clock was stepped back)
        base + 86_400 * 10**9 + 5_000,  # a day on
        0,
    ]
    for ns in instants:
        expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
        assert clock.at(ns) == utcformat(expected), ns


def test_values_packed_before_the_commands_are_one_more_group() -> None:
    commands = RecordedCommands("2,3,1", b"SETk")  # one command: SET k
    packed = commands.preceded_by([b"x", b"", b"yz"])
    assert packed == RecordedCommands("3,1,0,2,2,3,1", b"xyzSETk")
    # Before no commands too, the sizes stay a JSON array once bracketed, as the script reads
    # them.
    alone = RecordedCommands("", b"").preceded_by([b"x"])
    assert json.loads(f"[{alone.sizes}]") == [1, 1]
