"""The floor of POST /v1/generate on this stack: the least an enqueue must do, and nothing else.

FastAPI under the same uvicorn (httptools, uvloop, no access log) validates the API's own
GenerateRequest body, makes one Redis script call on redis-py's asyncio client (record the job,
push its id on a list) and answers a small JSON body with 202. No middleware, no model record,
no RQ job, no links. bench/enqueue.py --floor serves it next to the API to say how much of a
POST's cost is ours and how much the stack's.

    FLOOR_REDIS_URL=redis://... uvicorn bench.floor_app:app
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from pydantic import BaseModel
from redis.asyncio import Redis

from common.contract import GenerateRequest

REDIS_URL_ENV = "FLOOR_REDIS_URL"
ENQUEUE = """
redis.call('HSET', KEYS[1], 'status', 'queued', 'prompt', ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
"""


class Accepted(BaseModel):
    id: str
    status: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    redis = Redis.from_url(os.environ[REDIS_URL_ENV])
    app.state.enqueue = redis.register_script(ENQUEUE)
    yield
    await redis.aclose()


app = FastAPI(lifespan=lifespan)


@app.post("/v1/generate", status_code=202)
async def generate(body: GenerateRequest, request: Request) -> Accepted:
    job_id = uuid.uuid4().hex
    keys = [f"floor:job:{job_id}", "floor:queue"]
    await request.app.state.enqueue(keys=keys, args=[body.prompt, job_id])
    return Accepted(id=job_id, status="queued")
