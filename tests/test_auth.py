"""API keys and rate limits, over HTTP against the real API and Redis.

The keys are made by the real `sd3-serve keys create` and their printed lines written to the
keys file the API reads at start; the rate limits are counted in the deployment's redis-server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from redis import Redis
from redis.exceptions import AuthenticationError

from common import keys
from common.jobstore import OWNER_FIELD
from common.settings import env_var
from service.app import create_app
from service.auth import KeysFileError, hash_key, parse_rate, read_keys_file
from service.dev import Stack, free_port, publish_idle_model, wait_until
from service.settings import ApiSettings
from tests.harness import (
    Api,
    Deployment,
    base_env,
    deployment,
    settings_env,
    start_api,
)

IDLE_MODEL = "idle"
UNKNOWN_JOB = "0123456789abcdef0123456789abcdef"
CAROL_RATE = "5/minute"


def create_key(name: str, *rate: str) -> tuple[str, str]:
    """`sd3-serve keys create NAME [--rate RATE]`: the printed key and its keys-file line."""
    args = [sys.executable, "-m", "service", "keys", "create", name]
    if rate:
        args += ["--rate", *rate]
    result = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60)
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    return lines[1].strip(), lines[3].strip()


@dataclass
class Keyed:
    deployment: Deployment
    keys: dict[str, str]
    # A second API on the same Redis and keys, with SD3SERVE_METRICS_REQUIRE_KEY=true.
    metrics_keyed: Api

    @property
    def api(self) -> Api:
        return self.deployment.api

    def headers(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def submit(self, name: str) -> dict[str, Any]:
        body = {"model": IDLE_MODEL, "prompt": f"a job of {name}", "steps": 1}
        response = self.api.client.post("/v1/generate", json=body, headers=self.headers(name))
        assert response.status_code == 202, response.text
        job: dict[str, Any] = response.json()
        return job


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Keyed]:
    """A private Redis and API with three keys: alice and bob at SD3SERVE_RATE_LIMIT, carol at
    her own low rate (only the rate-limit test uses her); a model known, no worker."""
    work = tmp_path_factory.mktemp("keyed")
    made = {"alice": create_key("alice"), "bob": create_key("bob")}
    made["carol"] = create_key("carol", CAROL_RATE)
    keys_file = work / "api-keys"
    lines = ["# who may use this service", ""] + [line for _, line in made.values()]
    keys_file.write_text("\n".join(lines) + "\n")
    env = settings_env(api_keys_file=keys_file, rate_limit="600/minute")
    with deployment(work, model_dir, env) as keyed:
        publish_idle_model(keyed.redis_url, IDLE_MODEL)
        metrics_keyed = start_api(keyed.stack, keyed.env | settings_env(metrics_require_key=True))
        with closing(metrics_keyed.client):
            yield Keyed(keyed, {name: key for name, (key, _) in made.items()}, metrics_keyed)


def assert_unauthorized(response: httpx.Response, secret: str | None = None) -> dict[str, Any]:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error: dict[str, Any] = response.json()["error"]
    if secret is not None:
        assert secret not in response.text
    return error


@pytest.mark.stack
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("GET", f"/v1/models/{IDLE_MODEL}"),
        ("POST", "/v1/generate"),
        ("GET", f"/v1/jobs/{UNKNOWN_JOB}"),
        ("GET", f"/v1/jobs/{UNKNOWN_JOB}/events"),
        ("GET", f"/v1/jobs/{UNKNOWN_JOB}/images/0"),
        ("DELETE", f"/v1/jobs/{UNKNOWN_JOB}"),
        # Before routing: an unknown path or a malformed body tells a stranger nothing.
        ("GET", "/v1/no-such-route"),
    ],
)
def test_every_v1_route_needs_a_valid_key(keyed: Keyed, method: str, path: str) -> None:
    wrong = "sd3_not-a-key-of-this-service"
    for headers, message in (
        ({}, "needs a key"),
        ({"Authorization": f"Bearer {wrong}"}, "not valid"),
        ({"Authorization": f"Basic {keyed.keys['alice']}"}, "needs a key"),
    ):
        response = keyed.api.client.request(method, path, headers=headers, content=b"{")
        error = assert_unauthorized(response, wrong)
        assert error["code"] == "unauthorized"
        assert message in error["message"]
        assert set(error) == {"code", "message", "field", "details"}
    # The scheme's name in any case, as RFC 9110 has it.
    lower = {"authorization": f"bearer {keyed.keys['bob']}"}
    assert keyed.api.client.get("/v1/models", headers=lower).status_code == 200


@pytest.mark.stack
def test_health_and_docs_stay_open_and_metrics_as_configured(keyed: Keyed) -> None:
    for api in (keyed.api, keyed.metrics_keyed):
        assert api.client.get("/healthz").status_code == 200
        assert api.client.get("/readyz").status_code == 200
    for open_path in ("/metrics", "/openapi.json", "/docs"):
        assert keyed.api.client.get(open_path).status_code == 200, open_path
    # It fails closed: a path no one declared open needs a key, wherever it is.
    assert_unauthorized(keyed.api.client.get("/no-such-path"))
    assert_unauthorized(keyed.metrics_keyed.client.get("/metrics"))
    scraped = keyed.metrics_keyed.client.get("/metrics", headers=keyed.headers("alice"))
    assert scraped.status_code == 200
    assert "sd3serve_http_requests_total" in scraped.text


@pytest.mark.stack
def test_the_openai_route_answers_401_in_openai_shape(keyed: Keyed) -> None:
    response = keyed.api.client.post("/v1/images/generations", json={"prompt": "x"})
    error = assert_unauthorized(response)
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "unauthorized")

    wrong = "sd3_wrong-key"
    client = openai.OpenAI(base_url=f"{keyed.api.url}/v1", api_key=wrong, max_retries=0)
    with closing(client), pytest.raises(openai.AuthenticationError) as refused:
        client.images.generate(prompt="a small red circle", size="64x64")
    assert refused.value.status_code == 401
    assert wrong not in str(refused.value)

    # The SDK's api_key is the service's key.
    client = openai.OpenAI(base_url=f"{keyed.api.url}/v1", api_key=keyed.keys["bob"])
    with closing(client):
        assert [model.id for model in client.models.list()] == [IDLE_MODEL]


@pytest.mark.stack
def test_a_job_is_visible_to_its_key_only(keyed: Keyed) -> None:
    job = keyed.submit("alice")
    job_id = job["id"]
    with Redis.from_url(keyed.deployment.redis_url, decode_responses=True) as redis:
        assert redis.hget(keys.job(job_id), OWNER_FIELD) == "alice"

    client, alice, bob = keyed.api.client, keyed.headers("alice"), keyed.headers("bob")
    unknown = client.get(f"/v1/jobs/{UNKNOWN_JOB}", headers=bob).json()["error"]
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/images/0"),
        ("DELETE", f"/v1/jobs/{job_id}"),
    ):
        response = client.request(method, path, headers=bob)
        assert response.status_code == 404, (method, path, response.text)
        error = response.json()["error"]
        # Word for word what a job that never existed gets, but for the id.
        assert error["code"] == "job_not_found"
        assert error["message"] == unknown["message"].replace(UNKNOWN_JOB, job_id)

    # Bob's cancel did nothing: the job is alice's, queued, and hers to cancel.
    mine = client.get(f"/v1/jobs/{job_id}", headers=alice)
    assert mine.status_code == 200 and mine.json()["status"] == "queued"
    image = client.get(f"/v1/jobs/{job_id}/images/0", headers=alice)
    assert image.json()["error"]["code"] == "image_not_found"  # hers, but not made yet
    canceled = client.delete(f"/v1/jobs/{job_id}", headers=alice)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=alice) as events:
        assert events.status_code == 200
        assert "canceled" in events.read().decode()


@pytest.mark.stack
def test_past_the_rate_limit_429_then_other_keys_go_on(keyed: Keyed) -> None:
    client, carol = keyed.api.client, keyed.headers("carol")
    limit = parse_rate(CAROL_RATE)
    # Every /v1 request counts, whatever its answer.
    answers = [client.get(f"/v1/jobs/{UNKNOWN_JOB}", headers=carol).status_code]
    answers += [client.get("/v1/models", headers=carol).status_code for _ in range(limit.amount)]
    assert answers == [404] + [200] * (limit.amount - 1) + [429]

    refused = client.get("/v1/models", headers=carol)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert "5 per minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= limit.get_expiry()

    # The OpenAI route: the same limit, in OpenAI's shape, which the SDK knows.
    sdk = openai.OpenAI(base_url=f"{keyed.api.url}/v1", api_key=keyed.keys["carol"], max_retries=0)
    with closing(sdk), pytest.raises(openai.RateLimitError) as limited:
        sdk.images.generate(prompt="a small red circle", size="64x64")
    assert limited.value.response.headers["retry-after"].isdigit()
    body = limited.value.response.json()["error"]
    assert (body["type"], body["code"]) == ("rate_limit_error", "rate_limited")

    # Each key has its own window; health is never counted.
    assert client.get("/v1/models", headers=keyed.headers("alice")).status_code == 200
    assert keyed.api.client.get("/healthz").status_code == 200


@pytest.mark.stack
def test_generate_cli_sends_the_key_from_the_environment(keyed: Keyed, tmp_path: Path) -> None:
    def generate(key: str) -> subprocess.CompletedProcess[str]:
        argv = ["generate", "x", "--url", keyed.api.url, "--model", "no-such-model"]
        return subprocess.run(
            [sys.executable, "-m", "service", *argv, "-o", str(tmp_path / "out.png")],
            env=dict(os.environ) | {"SD3SERVE_API_KEY": key},
            capture_output=True,
            text=True,
            timeout=120,
        )

    refused = generate("sd3_wrong-key")
    assert refused.returncode == 2
    assert "401" in refused.stderr and "sd3_wrong-key" not in refused.stderr
    # Past the key, the request itself is judged: the model is unknown.
    judged = generate(keyed.keys["bob"])
    assert judged.returncode == 2
    assert "unknown model" in judged.stderr


# A keys file refused at start: the API exits with one line naming the line, echoing nothing.

SECRET = "sd3_pasted-by-mistake-" + "x" * 20
GOOD_LINE = f"alice {hash_key('sd3_a')}"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"{GOOD_LINE}\n{SECRET}\n", "line 2: expected `NAME SHA256-OF-KEY [RATE]`, found 1"),
        (f"# keys\n\nbob {SECRET}\n", "line 3: SHA256-OF-KEY must be 64 hex digits"),
        (f"{GOOD_LINE}\nbob {hash_key('b')} {SECRET}\n", "line 2: RATE must be"),
        (f"{GOOD_LINE} 10/fortnight\n", "line 1: RATE must be"),
        (f"{GOOD_LINE}\nalice {hash_key('b')}\n", "line 2: NAME is already used on line 1"),
        (f"{GOOD_LINE}\nbob {hash_key('sd3_a').upper()}\n", "line 2: the same key is already"),
        (f"{SECRET}/x {hash_key('b')}\n", "line 1: NAME must be"),
        ("# nothing yet\n", "holds no key"),
    ],
)
def test_a_bad_keys_file_is_refused_naming_the_line(
    tmp_path: Path, content: str, expected: str
) -> None:
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(content)
    with pytest.raises(KeysFileError) as refused:
        read_keys_file(keys_file, parse_rate("60/minute"))
    assert expected in str(refused.value)
    assert SECRET not in str(refused.value)


# One bad file through the real command, with one and with several API processes (the file is
# then checked before uvicorn starts them): the parser's every case is checked above.
@pytest.mark.parametrize("api_workers", [1, 2])
def test_a_bad_keys_file_stops_the_api_naming_the_line(tmp_path: Path, api_workers: int) -> None:
    content, expected = f"# keys\n\nbob {SECRET}\n", "line 3: SHA256-OF-KEY must be 64 hex digits"
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(content)
    env = dict(os.environ) | settings_env(
        api_keys_file=keys_file,
        api_workers=api_workers,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # never reached
    )
    result = subprocess.run(
        [sys.executable, "-m", "service", "api", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"sd3-serve api: {env_var('api_keys_file')} {keys_file}")
    assert expected in lines[0]
    assert SECRET not in result.stderr + result.stdout


def test_a_missing_keys_file_stops_the_api(tmp_path: Path) -> None:
    env = dict(os.environ) | settings_env(api_keys_file=tmp_path / "nope")
    result = subprocess.run(
        [sys.executable, "-m", "service", "api"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().endswith("cannot be read: No such file or directory")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad name"], "a key's name is"),
        (["alice", "--rate", "5/min"], "a rate is COUNT/second"),
        (["alice", "--rate", "0/minute"], "a rate is COUNT/second"),
    ],
)
def test_keys_create_refuses_bad_input(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "keys", "create", *args],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("sd3-serve keys create: ") and message in result.stderr


def test_keys_create_makes_distinct_keys_whose_line_holds_the_digest() -> None:
    (one, line), (two, _) = create_key("svc.batch-1", "1000/hour"), create_key("x")
    assert one != two and one.startswith("sd3_") and len(one) > 40
    assert line == f"svc.batch-1 {hash_key(one)} 1000/hour"
    assert one not in line


@pytest.mark.parametrize(
    ("text", "amount", "seconds"),
    [("60/minute", 60, 60), ("10/second", 10, 1), ("1000/hour", 1000, 3600), ("2/day", 2, 86400)],
)
def test_rates(text: str, amount: int, seconds: int) -> None:
    rate = parse_rate(text)
    assert (rate.amount, rate.get_expiry()) == (amount, seconds)


@pytest.mark.parametrize("text", ["60", "60/min", "-1/second", "1/2 minutes", "1 per day", ""])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="COUNT/second"):
        parse_rate(text)


def test_metrics_require_key_needs_keys() -> None:
    env = dict(os.environ) | settings_env(metrics_require_key=True)
    result = subprocess.run(
        [sys.executable, "-m", "service", "api"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert env_var("api_keys_file") in result.stderr


# The contract.


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app(ApiSettings.model_construct()).openapi()


def test_the_spec_declares_the_bearer_key_401_and_429(spec: dict[str, Any]) -> None:
    scheme = spec["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, item in spec["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            responses = op["responses"]
            if path.startswith("/v1/"):
                assert op["security"] == [{"bearer": []}], where
                assert {"401", "429"} <= set(responses), where
                assert "Retry-After" in responses["429"]["headers"], where
            elif path == "/metrics":
                assert op["security"] == [{}, {"bearer": []}], where
            else:
                assert "security" not in op and "401" not in responses, where
            if "401" in responses:
                assert "WWW-Authenticate" in responses["401"]["headers"], where


# A Redis with a password: the API works through it, and neither the password nor any key
# shows in its log or its answers.

REDIS_PASSWORD = "correct-horse-battery-staple-9f3b"


def start_redis_with_password(stack: Stack, work: Path) -> str:
    port = free_port()
    data = work / "redis"
    data.mkdir()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    stack.start("redis", [*argv, "--save", "", "--requirepass", REDIS_PASSWORD], dict(os.environ))
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"

    def up() -> bool:
        with Redis.from_url(url, socket_timeout=1) as redis:
            return bool(redis.ping())

    wait_until(up, stack, "redis-server", 30)
    with Redis(port=port) as anonymous, pytest.raises(AuthenticationError):
        anonymous.ping()
    return url


def start_logged_api(stack: Stack, env: dict[str, str], log: Path) -> Api:
    """The API as `sd3-serve api` runs it, its stdout and stderr written to `log`."""
    port = free_port()
    argv = [sys.executable, "-m", "service", "api", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    stack.children.append(("api", process))
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, stack, "the API", 120)
    return Api(url, httpx.Client(base_url=url, timeout=60))


@pytest.mark.stack
def test_a_password_protected_redis_works_and_no_secret_is_logged(
    tmp_path: Path, model_dir: Path
) -> None:
    key, line = create_key("alice")
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(line + "\n")
    stack = Stack()
    answers: list[httpx.Response] = []
    log = tmp_path / "api.log"
    try:
        url = start_redis_with_password(stack, tmp_path)
        env = base_env(url, tmp_path / "results", model_dir) | settings_env(api_keys_file=keys_file)
        api = start_logged_api(stack, env, log)
        with closing(api.client):
            alice = {"Authorization": f"Bearer {key}"}
            publish_idle_model(url, IDLE_MODEL)
            body = {"model": IDLE_MODEL, "prompt": "waits", "steps": 1}
            created = api.client.post("/v1/generate", json=body, headers=alice)
            assert created.status_code == 202, created.text
            job = api.client.get(created.headers["location"], headers=alice)
            assert job.status_code == 200 and job.json()["status"] == "queued"
            wrong = api.client.get("/v1/models", headers={"Authorization": f"Bearer {key[:-1]}"})
            assert wrong.status_code == 401
            answers += [created, job, wrong]

            # Redis goes away: the answers and the log say so, without its URL's password.
            redis_process = stack.children[0][1]
            redis_process.terminate()
            redis_process.wait(timeout=30)
            for path in ("/v1/models", created.headers["location"]):
                down = api.client.get(path, headers=alice)
                assert down.status_code == 503, down.text
                assert down.json()["error"]["code"] == "not_ready"
                answers.append(down)
            ready = api.client.get("/readyz")
            assert ready.status_code == 503
            answers.append(ready)
    finally:
        stack.stop()
    text = log.read_text(errors="replace")
    assert "redis unavailable" in text
    assert "GET /v1/models" in text  # the access log, which shows no header
    for secret in (REDIS_PASSWORD, key, key[:-1]):
        assert secret not in text
        for answer in answers:
            assert secret not in answer.text and secret not in str(answer.headers)
