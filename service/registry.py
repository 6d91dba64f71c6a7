"""The API's view of the model records and worker heartbeats that the workers keep in Redis.

The records are cached in the process, so that admitting a job reads none: every worker
heartbeat rewrites its model's record in keys.MODELS, usually with the same JSON, and the API
would otherwise parse them all on every POST. The cache is never trusted blindly: admission's
script (service.admission.SUBMIT) compares the record the job was validated against with the
one in Redis, in the same round trip that admits the job, and a job is admitted only if they
are equal. When they are not (a model record rewritten, a model gone with a Redis flush) or
the cache cannot answer (a model it does not know, which may have appeared since), it is read
again. Nothing else invalidates it, and nothing needs to.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from common import keys, workers
from common.contract import ModelInfo


@dataclass(frozen=True)
class KnownModel:
    info: ModelInfo
    created: int
    workers_ready: int


@dataclass(frozen=True)
class Models:
    """The model records as read at one moment: each parsed, and as the JSON Redis holds."""

    infos: dict[str, ModelInfo]
    records: dict[str, str]


class ModelRegistry:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._live = redis.register_script(workers.LIVE)
        self._cached: Models | None = None

    async def models(self, *, fresh: bool = False) -> Models:
        """The cached records, or (`fresh`, or none cached yet) those Redis holds now."""
        if fresh or self._cached is None:
            raw: dict[str, str] = await self.redis.hgetall(keys.MODELS)  # type: ignore[assignment]
            previous = self._cached
            infos = {}
            for name, record in raw.items():
                # Parsed only when it changed: heartbeats rewrite the same JSON.
                if previous is not None and previous.records.get(name) == record:
                    infos[name] = previous.infos[name]
                else:
                    infos[name] = ModelInfo.model_validate_json(record)
            self._cached = Models(infos, dict(raw))
        return self._cached

    async def infos(self) -> dict[str, ModelInfo]:
        """Every known model by name, as Redis holds them now."""
        return (await self.models(fresh=True)).infos

    async def describe(self, infos: dict[str, ModelInfo]) -> list[KnownModel]:
        """The models with when each was first seen and how many workers are warm now."""
        names = sorted(infos)
        if not names:
            return []
        created = await self.redis.hmget(keys.MODELS_CREATED, names)
        counts = await self._live(keys=[keys.workers(n) for n in names])
        return [
            KnownModel(infos[name], int(float(when or 0)), int(count))
            for name, when, count in zip(names, created, counts, strict=True)
        ]

    async def live_workers(self) -> int:
        """Warm workers across all models."""
        names = await self.redis.hkeys(keys.MODELS)
        if not names:
            return 0
        counts = await self._live(keys=[keys.workers(str(n)) for n in names])
        return sum(int(count) for count in counts)
