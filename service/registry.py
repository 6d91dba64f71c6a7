"""The API's view of the model records and worker heartbeats that the workers keep in Redis."""

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


class ModelRegistry:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._live = redis.register_script(workers.LIVE)

    async def infos(self) -> dict[str, ModelInfo]:
        """Every known model by name (one HGETALL: cheap enough for every request)."""
        raw = await self.redis.hgetall(keys.MODELS)
        return {str(name): ModelInfo.model_validate_json(value) for name, value in raw.items()}

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
