"""The OpenAPI contract: valid 3.1, stable operationIds, every answer declared, committed.

The unit tests read `create_app().openapi()` (no Redis needed); the `stack` tests check that
the real server's answers are the ones the document declares.
"""

from __future__ import annotations

import difflib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from service.app import create_app
from service.dev import publish_idle_model
from service.openapi import render
from service.routes.deps import LinksAt
from service.settings import ApiSettings
from tests.harness import Api, deployment, settings_env
from tests.helpers import submit

ROOT = Path(__file__).parent.parent
COMMITTED = ROOT / "clients" / "openapi.json"
EXPORT = "scripts/export_openapi.py"
SCHEMAS = "#/components/schemas/"
ENVELOPE = SCHEMAS + "ErrorResponse"
OPERATION_IDS = {
    "generate",
    "get_job",
    "stream_job_events",
    "cancel_job",
    "get_image",
    "list_models",
    "get_model",
    "create_image",
    "healthz",
    "readyz",
    "metrics",
}
# The OpenAI-compatible route answers every error in OpenAI's shape, by design, and invalid
# requests with OpenAI's 400 rather than 422.
OPENAI_SHAPED = {"create_image"}
OPENAI_ERROR = SCHEMAS + "OpenAIErrorResponse"
# A readiness probe's 503 carries the readiness, as its 200 does, not an error.
OWN_ERROR_BODIES = {("readyz", "503"): SCHEMAS + "ReadyResponse"}
IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp"}
BINARY = {"type": "string", "format": "binary"}
UNKNOWN_JOB = "0" * 32


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    # The settings do not shape the document; the defaults keep it off this machine's .env.
    return create_app(ApiSettings.model_construct()).openapi()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def operation(spec: dict[str, Any], operation_id: str) -> dict[str, Any]:
    return next(op for _, _, op in operations(spec) if op["operationId"] == operation_id)


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a JSON document, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def check_schema(spec: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Validate `instance` against a schema of the document, its `$ref`s resolved in it."""
    root = {**schema, "components": spec["components"]}
    jsonschema.Draft202012Validator(root).validate(instance)


def test_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    validate(spec)
    assert not [key for key, _ in walk(spec) if key == "itemSchema"]  # OpenAPI 3.2's


def test_operation_ids_are_the_route_names(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert sorted(ids) == sorted(OPERATION_IDS)


def test_every_operation_is_summarised_and_described(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        assert op.get("summary"), f"{method.upper()} {path}"
        assert op.get("description"), f"{method.upper()} {path}: give its function a docstring"


def test_every_error_response_is_the_envelope_as_json(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        for status, response in op["responses"].items():
            if not status.startswith(("4", "5", "default")):
                continue
            expected = OWN_ERROR_BODIES.get((op["operationId"], status), ENVELOPE)
            if op["operationId"] in OPENAI_SHAPED:
                expected = OPENAI_ERROR
            where = f"{method.upper()} {path} {status}"
            assert list(response["content"]) == ["application/json"], where
            assert response["content"]["application/json"]["schema"] == {"$ref": expected}, where


def test_fastapi_validation_error_is_gone(spec: dict[str, Any]) -> None:
    text = json.dumps(spec)
    assert "HTTPValidationError" not in text
    assert "ValidationError" not in spec["components"]["schemas"]


def test_every_operation_with_input_declares_422(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        invalid = "400" if op["operationId"] in OPENAI_SHAPED else "422"
        has_input = op.get("parameters") or op.get("requestBody")
        assert (invalid in op["responses"]) == bool(has_input), f"{method.upper()} {path}"


def test_every_operation_reaching_redis_declares_503(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        if path.startswith("/v1/") or op["operationId"] in ("readyz", "metrics"):
            assert "503" in op["responses"], f"{method.upper()} {path}"
    assert "503" not in operation(spec, "healthz")["responses"]


def test_every_operation_with_a_body_declares_413(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        assert ("413" in op["responses"]) == ("requestBody" in op), f"{method.upper()} {path}"


def test_429_and_503_declare_retry_after(spec: dict[str, Any]) -> None:
    seen = set()
    for path, method, op in operations(spec):
        for status in ("429", "503"):
            if status in op["responses"]:
                seen.add(status)
                headers = op["responses"][status].get("headers", {})
                assert headers["Retry-After"]["schema"]["type"] == "integer", (path, method)
    assert seen == {"429", "503"}


def test_the_specific_errors_are_declared(spec: dict[str, Any]) -> None:
    for operation_id in ("get_job", "stream_job_events", "cancel_job", "get_image", "get_model"):
        assert "404" in operation(spec, operation_id)["responses"], operation_id
    assert "409" in operation(spec, "cancel_job")["responses"]
    assert "429" in operation(spec, "generate")["responses"]


def test_generate_declares_its_statuses_and_headers(spec: dict[str, Any]) -> None:
    responses = operation(spec, "generate")["responses"]
    assert set(responses) == {"200", "202", "401", "413", "422", "429", "503"}
    for status in ("200", "202"):
        headers = responses[status]["headers"]
        assert headers["Location"]["required"] is True
        assert "Preference-Applied" in headers
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": SCHEMAS + "JobResponse"}
    assert set(operation(spec, "cancel_job")["responses"]) >= {"200", "202"}


def test_images_are_declared_as_binary_per_media_type(spec: dict[str, Any]) -> None:
    content = operation(spec, "get_image")["responses"]["200"]["content"]
    assert set(content) == IMAGE_TYPES
    for media in content.values():
        assert media["schema"] == BINARY


def test_events_are_a_described_event_stream(spec: dict[str, Any]) -> None:
    responses = operation(spec, "stream_job_events")["responses"]
    assert list(responses["200"]["content"]) == ["text/event-stream"]
    media = responses["200"]["content"]["text/event-stream"]
    assert media["schema"]["type"] == "string"
    description = media["schema"]["description"]
    for word in ("`status`", "`progress`", "`id`", '"step"', '"total"', '"error"'):
        assert word in description, word
    assert "event: progress" in media["example"]


def test_examples_match_their_schemas(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for name in ("JobResponse", "ModelCard", "ModelList", "ErrorResponse", "ReadyResponse"):
        assert schemas[name].get("examples"), name
    for name, schema in schemas.items():
        for example in schema.get("examples", []):
            if isinstance(example, dict):
                check_schema(spec, {"$ref": SCHEMAS + name}, example)
    for path, method, op in operations(spec):
        for status, response in op["responses"].items():
            media = response.get("content", {}).get("application/json", {})
            if "example" in media:
                try:
                    check_schema(spec, media["schema"], media["example"])
                except jsonschema.ValidationError as exc:
                    pytest.fail(f"{method.upper()} {path} {status}: {exc.message}")


def test_committed_spec_matches_the_app(spec: dict[str, Any]) -> None:
    expected = render(spec)
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.is_file() else ""
    if committed != expected:
        diff = difflib.unified_diff(
            committed.splitlines(), expected.splitlines(), "committed", "app", lineterm="", n=1
        )
        shown = "\n".join(list(diff)[:60])
        pytest.fail(
            f"{COMMITTED.relative_to(ROOT)} differs from the app's /openapi.json: "
            f"run `.venv/bin/python {EXPORT}` and commit the file.\n{shown}"
        )


# The real server's answers, against the document.


def conforms(spec: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """The answer's status, media type, required headers and JSON body are as declared."""
    where = f"{method.upper()} {path} -> {response.status_code}"
    declared = spec["paths"][path][method]["responses"].get(str(response.status_code))
    assert declared is not None, f"{where}: status not declared"
    media_type = response.headers["content-type"].split(";")[0].strip()
    content = declared.get("content", {})
    assert media_type in content, f"{where}: {media_type} not among {list(content)}"
    for name, header in declared.get("headers", {}).items():
        if header.get("required"):
            assert name.lower() in response.headers, f"{where}: no {name} header"
    if "Retry-After" in declared.get("headers", {}):
        assert int(response.headers["retry-after"]) >= 1, f"{where}: no Retry-After"
    if media_type == "application/json":
        check_schema(spec, content[media_type]["schema"], response.json())


@pytest.mark.stack
def test_live_errors_are_the_declared_envelope(api: Api, spec: dict[str, Any]) -> None:
    # A path parameter FastAPI refuses: 422, the envelope (not FastAPI's HTTPValidationError).
    bad_index = api.client.get(f"/v1/jobs/{UNKNOWN_JOB}/images/abc")
    assert bad_index.status_code == 422
    assert bad_index.json()["error"]["field"] == "index"
    conforms(spec, "get", "/v1/jobs/{job_id}/images/{index}", bad_index)
    # The event stream's 404 is JSON, before any stream.
    no_job = api.client.get(f"/v1/jobs/{UNKNOWN_JOB}/events")
    assert no_job.status_code == 404
    assert no_job.headers["content-type"] == "application/json"
    conforms(spec, "get", "/v1/jobs/{job_id}/events", no_job)
    for path, answer in (
        ("/v1/jobs/{job_id}", api.client.get(f"/v1/jobs/{UNKNOWN_JOB}")),
        ("/v1/jobs/{job_id}", api.client.delete(f"/v1/jobs/{UNKNOWN_JOB}")),
        ("/v1/models/{model_id}", api.client.get("/v1/models/no-such-model")),
        ("/v1/generate", submit(api, prompt="x", steps=1000)),
    ):
        assert answer.status_code in (404, 422)
        conforms(spec, answer.request.method.lower(), path, answer)


@pytest.mark.stack
def test_live_answers_of_a_job_are_as_declared(api: Api, spec: dict[str, Any]) -> None:
    done = submit(api, prefer="wait=60", prompt="a small red circle", steps=1)
    assert done.status_code == 200
    conforms(spec, "post", "/v1/generate", done)
    job = done.json()
    conforms(spec, "get", "/v1/jobs/{job_id}", api.client.get(job["links"]["self"]))
    conforms(spec, "get", "/v1/jobs/{job_id}/events", api.client.get(job["links"]["events"]))
    conforms(
        spec, "get", "/v1/jobs/{job_id}/images/{index}", api.client.get(job["links"]["images"][0])
    )
    conforms(spec, "delete", "/v1/jobs/{job_id}", api.client.delete(job["links"]["self"]))
    conforms(spec, "get", "/v1/models", api.client.get("/v1/models"))
    for path in ("/healthz", "/readyz", "/metrics"):
        conforms(spec, "get", path, api.client.get(path))


@pytest.mark.stack
def test_live_503_and_429_carry_retry_after(
    model_dir: Path, tmp_path: Path, spec: dict[str, Any]
) -> None:
    """A private Redis and API, no worker: nothing to queue for (503), then a full queue (429)."""
    with deployment(tmp_path, model_dir, settings_env(max_queued_jobs=1)) as bare:
        not_ready = submit(bare.api, prompt="too early", steps=1)
        assert not_ready.status_code == 503
        conforms(spec, "post", "/v1/generate", not_ready)
        # A model known from a worker that has since gone: its jobs queue and stay.
        idle = publish_idle_model(bare.redis_url, "idle")
        assert submit(bare.api, model=idle, prompt="waits", steps=1).status_code == 202
        full = submit(bare.api, model=idle, prompt="one too many", steps=1)
        assert full.status_code == 429
        conforms(spec, "post", "/v1/generate", full)


@pytest.mark.parametrize("base", ["http://127.0.0.1:8000/", "https://api.example/sd3/"])
def test_job_links_are_the_urls_starlette_builds(base: str) -> None:
    app = create_app(ApiSettings.model_construct())
    links = LinksAt(app, base)
    job_id = uuid.uuid4().hex
    for name, params in [
        ("get_job", {}),
        ("stream_job_events", {}),
        ("get_image", {"index": 0}),
        ("get_image", {"index": 3}),
    ]:
        expected = app.url_path_for(name, job_id=job_id, **params).make_absolute_url(base)
        assert links.url_for(name, job_id=job_id, **params) == str(expected)
