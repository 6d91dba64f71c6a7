"""Small client-side helpers shared by the end-to-end tests."""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
from httpx_sse import connect_sse
from PIL import Image

from common.contract import GenerateParams, OutputFormat
from tests.harness import Api

TERMINAL = {"succeeded", "failed", "canceled"}


def job_params(model: str = "m", **fields: Any) -> GenerateParams:
    """A job's resolved parameters: one 64×64 PNG of prompt "p", 2 steps, guidance 1, seed 1,
    on `model`; `fields` set any of them otherwise."""
    defaults: dict[str, Any] = {
        "prompt": "p",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance_scale": 1.0,
        "seed": 1,
        "num_images": 1,
        "output_format": OutputFormat.png,
    }
    return GenerateParams(model=model, **(defaults | fields))


def submit(api: Api, prefer: str | None = None, **body: Any) -> httpx.Response:
    headers = {"Prefer": prefer} if prefer else {}
    return api.client.post("/v1/generate", json=body, headers=headers)


def wait_final(api: Api, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    """Follow the job's events to its final state, then return the job."""
    deadline = time.monotonic() + timeout_s
    for kind, data in events(api, job_id):
        if kind == "status" and data["status"] in TERMINAL:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not finish in {timeout_s} s")
    job: dict[str, Any] = api.client.get(f"/v1/jobs/{job_id}").json()
    return job


def events(api: Api, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every SSE event of the job; the stream ends with its final state."""
    out = []
    with connect_sse(api.client, "GET", f"/v1/jobs/{job_id}/events") as source:
        source.response.raise_for_status()
        for event in source.iter_sse():
            if event.data:  # skip keep-alive comments
                out.append((event.event, event.json()))
    return out


def first_progress(api: Api, job_id: str) -> None:
    """Return as soon as the job has taken its first denoising step."""
    with connect_sse(api.client, "GET", f"/v1/jobs/{job_id}/events") as source:
        for event in source.iter_sse():
            if event.event == "progress":
                return
            if not event.data:
                continue
            if event.event == "status" and event.json()["status"] in TERMINAL:
                raise AssertionError(f"job {job_id} ended before its first step")


def fetch_image(api: Api, url: str) -> tuple[Image.Image, httpx.Response]:
    response = api.client.get(url)
    response.raise_for_status()
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image, response
