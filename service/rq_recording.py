"""RQ's enqueue of a job, recorded for service.admission.SUBMIT to run, and replayed per job.

RQ stays the author of its data: its own enqueue, run on a pipeline that is never sent, writes
the commands, and SUBMIT runs them only once the job is admitted. Recording that for every job
cost about a quarter of a POST's CPU (RQ builds a Job, pickles and compresses its call, formats
two times, and redis-py builds each command), so it is recorded once per model, and each job's
commands are that recording with the job's own id and time put in. Those are the only parts of
RQ's job that differ from one job to the next, as the task takes no arguments
(worker.tasks.generate reads its job's id from RQ). A recording is trusted only once a second
one, of another id at another time, is reproduced exactly by putting that id and those times
into the first; otherwise each job is recorded by RQ afresh.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from redis import Redis
from redis._parsers import Encoder
from rq import Queue
from rq.job import Job
from rq.utils import utcformat

# The fields of RQ's job hash that hold the time of the enqueue, in RQ's own format.
TIME_FIELDS = ("created_at", "enqueued_at")
# How many pairs of recordings to try before giving up on replaying: two recordings whose
# times are equal to the microsecond cannot tell the two fields apart.
TEMPLATE_TRIES = 3


class RecordedCommands(NamedTuple):
    """Redis commands packed in two strings, for a script to run (service.admission.SUBMIT):
    `sizes`, per command, its argument count then each argument's length in bytes, separated by
    commas (a JSON array once bracketed: Lua reads it with one cjson.decode); `data`, the
    arguments' bytes back to back.

    Two script arguments instead of one per command argument: redis-py encodes and frames each
    argument in Python, and RQ's enqueue of one job has about fifty.
    """

    sizes: str
    data: bytes

    @classmethod
    def pack(cls, commands: list[tuple[object, ...]], encoder: Encoder) -> RecordedCommands:
        sizes: list[int] = []
        parts: list[bytes] = []
        for args in commands:
            # Most of RQ's arguments are str or bytes already: encoded here at C speed.
            encoded = [
                arg
                if type(arg) is bytes
                else arg.encode()
                if type(arg) is str
                else encoder.encode(arg)  # type: ignore[no-untyped-call]
                for arg in args
            ]
            sizes.append(len(encoded))
            sizes.extend(map(len, encoded))
            parts.extend(encoded)
        return cls(",".join(map(str, sizes)), b"".join(parts))

    def preceded_by(self, values: list[bytes]) -> RecordedCommands:
        """These commands with `values` packed before them as one more group, for a script
        to read before it runs the commands."""
        sizes = [str(len(values)), *(str(len(value)) for value in values)]
        if self.sizes:
            sizes.append(self.sizes)
        return RecordedCommands(",".join(sizes), b"".join(values) + self.data)


@dataclass(frozen=True)
class Recording:
    """RQ's enqueue of one job, and what in it is that job's own: its id and the times."""

    commands: RecordedCommands
    job_id: str
    times: dict[str, str]

    @classmethod
    def record(cls, redis: Redis, queue: Queue, job: Job) -> Recording:
        recorder = redis.pipeline(transaction=False)
        queue.enqueue_job(job, pipeline=recorder)
        stack = [args for args, _ in recorder.command_stack]
        recorder.reset()
        times: dict[str, str] = {}
        for args in stack:
            if args[0] == "HSET":
                fields = dict(zip(args[2::2], args[3::2], strict=True))
                times |= {name: str(fields[name]) for name in TIME_FIELDS if name in fields}
        return cls(RecordedCommands.pack(stack, redis.get_encoder()), job.id, times)


class EnqueueTemplate:
    """A model's recorded enqueue, cut where the job's id and times go."""

    def __init__(self, recording: Recording) -> None:
        self.sizes = recording.commands.sizes
        names = {recording.job_id.encode(): "id"}
        names |= {value.encode(): name for name, value in recording.times.items()}
        if len(names) != 1 + len(TIME_FIELDS):
            raise ValueError("the recording's id and times are not all distinct")
        self._lengths = {name: len(token) for token, name in names.items()}
        pattern = re.compile(b"(" + b"|".join(re.escape(token) for token in names) + b")")
        # Odd pieces are what the pattern matched: where a value of that name goes.
        self._pieces = pattern.split(recording.commands.data)
        self._slots = [(i, names[piece]) for i, piece in enumerate(self._pieces) if i % 2]

    @classmethod
    def of(cls, first: Recording, second: Recording) -> EnqueueTemplate | None:
        """`first` as a template, if it replays `second`, RQ's enqueue of another job."""
        if set(first.times) != set(TIME_FIELDS) or set(second.times) != set(TIME_FIELDS):
            return None
        try:
            template = cls(first)
        except ValueError:
            return None
        replayed = template.fill(second.job_id, second.times)
        return template if replayed == second.commands else None

    def fill(self, job_id: str, times: dict[str, str]) -> RecordedCommands | None:
        """The commands for `job_id` enqueued at `times`; None if a value's length differs
        from the recording's, which would change the commands' sizes."""
        values = {"id": job_id.encode()} | {name: t.encode() for name, t in times.items()}
        for name, length in self._lengths.items():
            if len(values[name]) != length:
                return None
        pieces = self._pieces.copy()
        for i, name in self._slots:
            pieces[i] = values[name]
        return RecordedCommands(self.sizes, b"".join(pieces))


class EnqueueClock:
    """The time fields of a job enqueued now, as RQ writes them (`rq.utils.utcformat` of the
    time), with RQ's formatting of the whole second done once a second: strftime on every job
    was 2 % of a POST's CPU."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._prefix = ""
        # Only where RQ's format ends in the microseconds, as its "...%S.%fZ" does; else each
        # time is RQ's own formatting.
        sample = utcformat(datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC))
        self._cuts = sample.endswith(".789012Z") and sample.count("789012") == 1

    def at(self, ns: int) -> str:
        """RQ's format of the time `ns` nanoseconds after the epoch, to the microsecond."""
        second, micro = divmod(ns // 1000, 1_000_000)
        if not self._cuts:
            return utcformat(_EPOCH + timedelta(seconds=second, microseconds=micro))
        if second != self._second:
            whole = utcformat(_EPOCH + timedelta(seconds=second))
            self._prefix, self._second = whole[: -len("000000Z")], second
        return f"{self._prefix}{micro:06d}Z"

    def times(self) -> dict[str, str]:
        return dict.fromkeys(TIME_FIELDS, self.at(time.time_ns()))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
