"""Bad input: every bound answers 422 in the one error shape, naming the field; never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import TINY_MODEL, Api
from tests.helpers import submit

pytestmark = pytest.mark.stack

OK: dict[str, Any] = {"prompt": "a red circle"}

# (body overrides, field named in the error, words the message must contain)
BAD_BODIES = [
    ({"model": "sd3.5-large"}, "model", f"unknown model 'sd3.5-large'; known models: {TINY_MODEL}"),
    ({"model": "../etc/passwd"}, "model", "should match pattern"),
    ({"model": 3}, "model", "string"),
    ({"prompt": ""}, "prompt", "at least 1"),
    ({"prompt": "   \n\t "}, "prompt", "at least 1"),  # empty after trimming
    ({"prompt": "x" * 2001}, "prompt", "at most 2000"),
    ({"prompt": 42}, "prompt", "string"),
    ({"negative_prompt": "x" * 2001}, "negative_prompt", "at most 2000"),
    ({"width": 7}, "width", "greater than or equal to 8"),
    ({"width": 4097}, "width", "less than or equal to 4096"),
    ({"width": 100}, "width", "multiple of 8"),
    ({"width": 56}, "width", "between 64 and 512"),
    ({"width": 520}, "width", "between 64 and 512"),
    ({"height": 4104}, "height", "less than or equal to 4096"),
    ({"height": 60}, "height", "multiple of 8"),
    ({"height": 1024}, "height", "between 64 and 512"),
    ({"width": 64.5}, "width", "integer"),
    ({"steps": 0}, "steps", "greater than or equal to 1"),
    ({"steps": 101}, "steps", "less than or equal to 100"),
    ({"steps": "many"}, "steps", "integer"),
    ({"guidance_scale": -0.1}, "guidance_scale", "greater than or equal to 0"),
    ({"guidance_scale": 20.5}, "guidance_scale", "less than or equal to 20"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),
    ({"seed": 2**32}, "seed", "less than or equal to 4294967295"),
    ({"num_images": 0}, "num_images", "greater than or equal to 1"),
    ({"num_images": 5}, "num_images", "less than or equal to 4"),
    ({"output_format": "gif"}, "output_format", "'png', 'jpeg' or 'webp'"),
    ({"sampler": "ddim"}, "sampler", "unknown field"),
]


def assert_error(response: Any, status: int, code: str, field: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "message", "field", "details"}
    assert error["code"] == code
    assert error["field"] == field
    return error


@pytest.mark.parametrize(("override", "field", "words"), BAD_BODIES)
def test_each_bound_is_a_422_naming_the_field(
    api: Api, override: dict[str, Any], field: str, words: str
) -> None:
    error = assert_error(submit(api, **(OK | override)), 422, "invalid_parameter", field)
    assert words in error["message"], error["message"]
    assert error["details"][0]["field"] == field


def test_missing_prompt(api: Api) -> None:
    assert_error(api.client.post("/v1/generate", json={}), 422, "invalid_parameter", "prompt")


def test_all_bad_fields_are_listed(api: Api) -> None:
    error = assert_error(
        submit(api, prompt="", steps=0, seed=-5), 422, "invalid_parameter", "prompt"
    )
    assert [d["field"] for d in error["details"]] == ["prompt", "steps", "seed"]


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b"[1, 2]", b'"a string"', b"\xff\xfe"],
    ids=["broken", "empty", "array", "string", "bytes"],
)
def test_malformed_bodies(api: Api, body: bytes) -> None:
    response = api.client.post(
        "/v1/generate", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_parameter"


@pytest.mark.parametrize("prefer", ["wait=61", "wait=-1", "wait=soon", "wait=1.5"])
def test_bad_prefer_wait(api: Api, prefer: str) -> None:
    error = assert_error(submit(api, prefer=prefer, **OK), 422, "invalid_parameter", "prefer")
    assert "0 to 60" in error["message"]


def test_other_preferences_are_ignored(api: Api) -> None:
    assert submit(api, prefer="respond-async", prompt="x", steps=1).status_code == 202


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/jobs/0123456789abcdef0123456789abcdef", "job_not_found"),
        ("/v1/jobs/not-a-job", "job_not_found"),
        ("/v1/jobs/0123456789abcdef0123456789abcdef/events", "job_not_found"),
        ("/v1/jobs/..%2f..%2fetc%2fpasswd/images/0", "not_found"),
    ],
)
def test_unknown_job_is_404(api: Api, path: str, code: str) -> None:
    assert_error(api.client.get(path), 404, code, None)


def test_unknown_job_delete_and_image_are_404(api: Api) -> None:
    job = "0123456789abcdef0123456789abcdef"
    assert_error(api.client.delete(f"/v1/jobs/{job}"), 404, "job_not_found", None)
    assert_error(api.client.get(f"/v1/jobs/{job}/images/0"), 404, "job_not_found", None)


def test_image_index_out_of_range(api: Api) -> None:
    job = submit(api, prefer="wait=60", prompt="x", steps=1).json()
    assert job["status"] == "succeeded"
    base = f"/v1/jobs/{job['id']}/images"
    assert_error(api.client.get(f"{base}/1"), 404, "image_not_found", "index")
    assert_error(api.client.get(f"{base}/9"), 422, "invalid_parameter", "index")
    assert_error(api.client.get(f"{base}/-1"), 422, "invalid_parameter", "index")
    assert_error(api.client.get(f"{base}/zero"), 422, "invalid_parameter", "index")


def test_unknown_route_and_method_use_the_envelope(api: Api) -> None:
    assert_error(api.client.get("/v2/generate"), 404, "not_found", None)
    assert_error(api.client.get("/v1/generate"), 405, "method_not_allowed", None)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/generate", "POST"),
        ("PUT", "/v1/jobs/0123456789abcdef0123456789abcdef", "GET, DELETE"),  # two routes
        ("POST", "/v1/jobs/0123456789abcdef0123456789abcdef/images/0", "GET"),
        ("DELETE", "/v1/models", "GET"),
        ("GET", "/v1/images/generations", "POST"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_405_names_the_allowed_methods(api: Api, method: str, path: str, allow: str) -> None:
    response = api.client.request(method, path)
    error = assert_error(response, 405, "method_not_allowed", None)
    assert response.headers["allow"] == allow
    assert allow in error["message"]


# Arabic-Indic and fullwidth zeros percent-encoded, as a client sends them.
NON_CANONICAL_INDICES = ["+0", "%200", "0%20", "00", "01", "0x0", "0_0", "0.0", "1e0", "-0"]
NON_CANONICAL_INDICES += ["%D9%A0", "%EF%BC%90"]


def test_only_the_canonical_image_index(api: Api) -> None:
    job = submit(api, prefer="wait=60", prompt="x", steps=1, num_images=2).json()
    assert job["status"] == "succeeded"
    base = f"/v1/jobs/{job['id']}/images"
    assert [api.client.get(f"{base}/{i}").status_code for i in ("0", "1")] == [200, 200]
    for index in NON_CANONICAL_INDICES:
        response = api.client.get(f"{base}/{index}")
        assert response.status_code in (404, 422), (index, response.text)
        assert response.json()["error"]["field"] == "index", index
