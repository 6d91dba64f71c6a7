"""Schemathesis against the live API: every operation of the committed document, every check.

The `st` CLI runs as a subprocess, with a fixed seed, against a private stack on loopback
(Redis, the API with one API key, one warm worker on the tiny model): its examples, coverage,
fuzzing and stateful phases, a few hundred requests in all. The run must end without a single
failure: no 5xx, no status, header, content type or body the document does not declare, no
schema-valid request refused and no invalid one accepted.

The deployment makes every answer deterministic: a queue that never fills, a key whose rate
limit is never reached, a model that is always warm. What is left out, and why, is in CONFIG.
This module is also the run's hooks module (`hooks` in CONFIG), for `after_call`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from service.auth import key_line, new_key
from tests.harness import (
    TINY_MODEL,
    Deployment,
    deployment,
    poll,
    settings_env,
    start_worker,
    worker_count,
)
from tests.helpers import wait_final

ROOT = Path(__file__).parent.parent
SPEC = ROOT / "clients" / "openapi.json"
ST = Path(sys.executable).parent / "st"
SEED = 20260125
# Hypothesis examples per operation in the fuzzing phase and for the stateful phase's state
# machine; the coverage phase adds its own deterministic cases (boundaries, each kind of invalid
# input, the methods a path does not allow).
MAX_EXAMPLES = 10
STATEFUL_MAX_STEPS = 6
# Far above anything the run sends: no 429 for a full queue or a spent rate limit.
MAX_QUEUED_JOBS = 100_000
KEY_RATE = "1000000/minute"
# The OpenAI route's answer waits for its job, and most generated bodies name no steps: with the
# model's default at 1 step those jobs take a fraction of a second.
DEFAULT_STEPS = 1

CONFIG = """\
seed = {seed}
workers = 1
hooks = "tests.test_schemathesis"
# The OpenAI route answers once its job has ended.
request-timeout = 120

[generation]
max-examples = {max_examples}
database = "none"

[phases.stateful]
max-steps = {stateful_max_steps}

[auth.openapi.bearer]
bearer = "{key}"

# Every check is on by default (the CLI's `--checks all` would override the exceptions here),
# but for max_response_time, which needs a limit: this suite asserts no timings.
[checks]
# DELETE /v1/jobs/{{job_id}} cancels a job; it does not remove it. The job stays readable (as
# `canceled`) until it expires, by design, so "deleted resource still available" does not apply.
use_after_free.enabled = false

[[operations]]
include-operation-id = "generate"
# The document's bounds are the service's hard ceilings; each model narrows them at run time
# (size multiple, min and max size, pixel budget: GET /v1/models), a webhook needs the webhook
# secret this deployment does not set, and an Idempotency-Key already used with another body is
# refused (the run sends one key with many bodies). Such schema-valid requests get 422, declared.
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx",
]

[[operations]]
include-operation-id = "create_image"
# As for generate, in OpenAI's shape: the model's limits (a `size` it cannot make) answer 400,
# an Idempotency-Key already used with another body 422 (under `default`).
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "422", "429", "5xx",
]

[[operations]]
include-operation-id = "stream_job_events"
# In an OpenAPI 3.1 document a response's `schema` describes its whole body: here the event
# stream is a string, and its description gives the events (tests/test_openapi.py holds it so).
# Schemathesis reads a 3.1 `text/event-stream` schema as the schema of each event instead (3.2's
# `itemSchema`), so it would hold every event against `type: string`. The stream's status,
# content type and headers are still checked, and its events by tests/test_openapi.py.
checks.response_schema_conformance.enabled = false
# A finished job: its whole stream, rather than only 404s for made-up ids.
parameters = {{ job_id = "{job_id}" }}

[[operations]]
include-operation-id = ["get_job", "get_image"]
# A finished job, so that these answer 200 (a job with its image links, an image), not only 404.
# DELETE keeps made-up ids: it meets real jobs in the stateful phase.
parameters = {{ job_id = "{job_id}" }}

[[operations]]
include-operation-id = "get_model"
parameters = {{ model_id = "{model}" }}
"""
# What the report must show run: every built-in check but those CONFIG leaves out.
CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ensure_resource_availability",
    "ignored_auth",
    "object_level_authorization",
}


@schemathesis.hook
def after_call(
    context: schemathesis.HookContext,
    case: schemathesis.Case[Any],
    response: schemathesis.Response,
) -> None:
    """Cancel every job POST /v1/generate accepted, so that the queue stays empty.

    The one worker could not keep up with the generated jobs (up to 100 steps × 4 images
    each), and the OpenAI route's answer waits for its job: behind such a queue it would end
    in a 504. A canceled job is still one the stateful phase can follow.
    """
    if case.operation.label != "POST /v1/generate" or response.status_code != 202:
        return
    [location] = response.headers["location"]
    headers = {"Authorization": str(response.request.headers["Authorization"])}
    reply = httpx.delete(location, headers=headers, timeout=30)
    # 409: the worker was quicker, and the job has already ended.
    assert reply.status_code in (200, 202, 409), reply.text


@dataclass
class Target:
    live: Deployment
    key: str
    finished_job: str


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Target]:
    work = tmp_path_factory.mktemp("schemathesis")
    key = new_key()
    keys_file = work / "api-keys"
    keys_file.write_text(key_line("schemathesis", key, KEY_RATE) + "\n")
    env = settings_env(
        api_keys_file=keys_file, max_queued_jobs=MAX_QUEUED_JOBS, default_steps=DEFAULT_STEPS
    )
    with deployment(work, model_dir, env) as live:
        start_worker(live.stack, live.env, "schemathesis-worker")
        live.api.client.headers["Authorization"] = f"Bearer {key}"
        poll(lambda: worker_count(live.api) == 1, "a warm worker", 120)
        reply = live.api.client.post("/v1/generate", json={"prompt": "a red circle"})
        job = wait_final(live.api, reply.json()["id"])
        assert job["status"] == "succeeded", job
        yield Target(live, key, job["id"])


@dataclass
class Run:
    """What the ndjson report says was sent, answered and checked."""

    requests: int
    statuses: Counter[int]
    checks: set[str]
    failures: list[str]


def read_report(path: Path) -> Run:
    run = Run(0, Counter(), set(), [])
    for line in path.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        if "ScenarioFinished" not in event:
            continue
        recorder = event["ScenarioFinished"]["recorder"]
        for interaction in recorder.get("interactions", {}).values():
            run.requests += 1
            if interaction.get("response") is not None:
                run.statuses[interaction["response"]["status_code"]] += 1
        for case_id, results in recorder.get("checks", {}).items():
            for result in results:
                run.checks.add(result["name"])
                if result["status"] == "failure":
                    run.failures.append(f"{recorder['label']} {case_id}: {result['name']}")
    return run


@pytest.mark.stack
@pytest.mark.timeout(600)
def test_schemathesis_finds_nothing(target: Target, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        CONFIG.format(
            seed=SEED,
            max_examples=MAX_EXAMPLES,
            stateful_max_steps=STATEFUL_MAX_STEPS,
            key=target.key,
            job_id=target.finished_job,
            model=TINY_MODEL,
        )
    )
    report = tmp_path / "report.ndjson"
    argv = [
        *(str(ST), "--config-file", str(config), "run", str(SPEC)),
        *("--url", target.live.api.url, "--no-color"),
        *("--report", "ndjson", "--report-ndjson-path", str(report)),
    ]
    # The hooks module is this one, imported from the repository. The run's caches (its crashes
    # to replay, Hypothesis's constants) go in a fresh folder: a run replays no earlier one.
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True)
    run = read_report(report)
    summary = result.stdout[result.stdout.rfind("SUMMARY") :]
    print(f"{summary}\n{run.requests} requests; statuses: {dict(sorted(run.statuses.items()))}")
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    assert not run.failures
    assert not [status for status in run.statuses if status >= 500]
    assert run.checks == CHECKS
    assert run.requests >= 200


# Found by this suite: FastAPI answers a JSON body it cannot decode with its own 400, which the
# document does not declare on /v1/generate and which the OpenAI route turned into a 500.
UNDECODABLE = {
    "not UTF-8": b"\xe3\xef",
    # Under SD3SERVE_MAX_BODY_BYTES, past Python's recursion limit.
    "nested too deep": b"[" * 30_000 + b"]" * 30_000,
}


@pytest.mark.stack
@pytest.mark.parametrize("body", UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_a_body_that_cannot_be_decoded_is_invalid_json(target: Target, body: bytes) -> None:
    client = target.live.api.client
    headers = {"Content-Type": "application/json"}
    ours = client.post("/v1/generate", content=body, headers=headers)
    assert ours.status_code == 422, ours.text
    assert ours.json()["error"]["code"] == "invalid_parameter"
    assert ours.json()["error"]["field"] == "body"
    openai = client.post("/v1/images/generations", content=body, headers=headers)
    assert openai.status_code == 400, openai.text
    assert openai.json()["error"]["code"] == "invalid_json"


def schemas(node: Any) -> Iterator[dict[str, Any]]:
    """Every object of a JSON document with a `type`: its schemas, and a few others."""
    if isinstance(node, dict):
        if "type" in node:
            yield node
        for value in node.values():
            yield from schemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from schemas(value)


def test_the_document_bounds_values_in_json_schema_words() -> None:
    # Found by this suite: `ge`/`le` are pydantic's words, which a client's validator ignores,
    # so the image index looked unbounded.
    document = json.loads(SPEC.read_text(encoding="utf-8"))
    assert not [s for s in schemas(document) if {"ge", "gt", "le", "lt"} & s.keys()]
    [index] = [
        p
        for p in document["paths"]["/v1/jobs/{job_id}/images/{index}"]["get"]["parameters"]
        if p["name"] == "index"
    ]
    assert (index["schema"]["minimum"], index["schema"]["maximum"]) == (0, 3)
