"""What clients send a Redis meanwhile, from MONITOR: for the tests and the benches that count
commands and round trips (not used by the service itself)."""

from __future__ import annotations

import hashlib
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis

from service.dev import wait_until

MONITOR_END = "sd3serve-monitor-end"


def evalsha(script: str) -> str:
    """How `Sent` shows a call of `script`: its name and first argument."""
    return f"EVALSHA {hashlib.sha1(script.encode()).hexdigest()}".upper()


class Sent:
    """The commands seen, in order, each as its name and first argument (a script's SHA-1),
    with the client (address:port) that sent it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self) -> list[str]:
        """Every client's commands, interleaved as Redis ran them."""
        return [command for _, command in self.seen]

    def by_client(self) -> dict[str, list[str]]:
        commands: dict[str, list[str]] = defaultdict(list)
        for client, command in self.seen:
            commands[client].append(command)
        return commands


@contextmanager
def commands_sent(redis_url: str) -> Iterator[Sent]:
    """The commands clients send Redis meanwhile, from MONITOR: the commands a script runs are
    left out, as the script is one command, one round trip. Read after the block."""
    sent = Sent()
    done = threading.Event()
    with Redis.from_url(redis_url, decode_responses=True) as control:
        # The caller's own commands (on this connection) are left out too.
        mine = control.client_info()["addr"]

        def watch() -> None:
            with Redis.from_url(redis_url) as redis, redis.monitor() as monitor:
                while True:
                    command = monitor.next_command()
                    if command["client_type"] == "lua":
                        continue
                    if MONITOR_END in command["command"]:
                        break
                    client = f"{command['client_address']}:{command['client_port']}"
                    if client != mine:
                        name = " ".join(command["command"].split()[:2]).upper()
                        sent.seen.append((client, name))
            done.set()

        threading.Thread(target=watch, daemon=True).start()
        wait_until(lambda: monitoring(control), None, "MONITOR to start", 30)
        try:
            yield sent
        finally:
            control.echo(MONITOR_END)
            if not done.wait(30):
                raise RuntimeError("MONITOR never saw the end of its window")


def monitoring(control: Redis) -> bool:
    """Whether Redis has run a MONITOR: it then shows every command that follows."""
    return any(client["cmd"] == "monitor" for client in control.client_list())
