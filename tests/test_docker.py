"""The container images and docker/compose.yaml, checked with no Docker engine.

hadolint lints the Dockerfiles; `docker-compose config` resolves the compose files the way
`docker compose up` would, and the tests read that resolved form. The build context
(.dockerignore) is replayed to build the package the images install. Last, a rehearsal runs
the compose services as local processes, with the commands and environment the containers
would get, compose's host names, ports and volumes mapped to local ones, and generates an image
through them: the wiring of names, ports and variables is exercised, not only parsed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from pydantic_settings import BaseSettings
from redis import Redis

from common import keys
from common.settings import ENV_PREFIX, env_var
from service.auth import key_line, new_key
from service.cli import parser
from service.dev import REDIS_DURABILITY, Stack, free_port, wait_until
from service.settings import ApiSettings
from tests.harness import Api, start_redis, worker_count
from tests.helpers import fetch_image, submit
from tests.moto_server import start_moto
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
DOCKERFILES = sorted(DOCKER.glob("*Dockerfile"))
API_DOCKERFILE = DOCKER / "api.Dockerfile"
WORKER_DOCKERFILE = DOCKER / "worker.Dockerfile"

# The ports the stand-ins' real images listen on: redis-server's and MinIO's S3 API.
REDIS_PORT = 6379
MINIO_PORT = 9000
START_TIMEOUT_S = 240  # the CPU worker loads and warms the bundled model first

Service = dict[str, Any]


def tool(name: str) -> str:
    """A tool scripts/setup installs (hadolint and docker-compose with the `dev` extra, promtool
    from Debian): CI has it, so a missing one fails rather than skips."""
    beside_python = BIN / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/setup")
    return found


# ---- compose -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way to run the compose files: which files, which profiles, what should start, and
    the variables exported where it runs."""

    files: tuple[str, ...]
    profiles: tuple[str, ...]
    services: frozenset[str]
    env: tuple[tuple[str, str], ...] = ()


BASE = frozenset({"redis", "api"})
S3 = frozenset({"minio", "minio-init"})
OBSERVABILITY = frozenset({"prometheus", "grafana"})
# What compose.keys.yaml mounts: the keys file on the host, named by this variable.
KEYS_HOST_FILE = "SD3SERVE_API_KEYS_HOST_FILE"
KEYS_ENV = ((KEYS_HOST_FILE, "/srv/sd3-serve/api-keys"),)
VARIANTS = {
    "default": Variant(("compose.yaml",), (), BASE),
    "cpu": Variant(("compose.yaml",), ("cpu",), BASE | {"worker-cpu"}),
    "gpu": Variant(("compose.yaml",), ("gpu",), BASE | {"worker"}),
    "observability": Variant(("compose.yaml",), ("observability",), BASE | OBSERVABILITY),
    "s3": Variant(("compose.yaml", "compose.s3.yaml"), ("cpu",), BASE | S3 | {"worker-cpu"}),
    "keys": Variant(("compose.yaml", "compose.keys.yaml"), (), BASE, KEYS_ENV),
    "all": Variant(
        ("compose.yaml", "compose.s3.yaml", "compose.keys.yaml"),
        ("cpu", "gpu", "observability"),
        BASE | S3 | OBSERVABILITY | {"worker", "worker-cpu"},
        KEYS_ENV,
    ),
}


def compose(
    variant: Variant, *args: str, env_file: str = os.devnull
) -> subprocess.CompletedProcess[str]:
    """docker-compose on the variant, as a user with no .env (unless `env_file`) and only the
    variant's variables exported would run it."""
    argv = [tool("docker-compose"), "--env-file", env_file]
    for name in variant.files:
        argv += ["-f", str(DOCKER / name)]
    for profile in variant.profiles:
        argv += ["--profile", profile]
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/")} | dict(variant.env)
    return subprocess.run(
        argv + list(args), cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60
    )


@cache
def config(variant_name: str) -> dict[str, Any]:
    """The variant's resolved configuration: interpolated, merged, filtered by profile."""
    done = compose(VARIANTS[variant_name], "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    resolved: dict[str, Any] = json.loads(done.stdout)
    return resolved


def services(variant_name: str) -> dict[str, Service]:
    found: dict[str, Service] = config(variant_name)["services"]
    return found


def unescape(value: str) -> str:
    """`$$` in a compose file is a literal `$` in the container (config keeps it escaped)."""
    return value.replace("$$", "$")


def volume(service: Service, target: str) -> dict[str, Any]:
    mounts = [v for v in service.get("volumes", []) if v["target"] == target]
    assert len(mounts) == 1, f"one mount at {target} expected, got {mounts}"
    found: dict[str, Any] = mounts[0]
    return found


def published(service: Service) -> dict[int, int]:
    return {int(p["published"]): int(p["target"]) for p in service.get("ports", [])}


# ---- Dockerfiles -------------------------------------------------------------------------


@dataclass
class Stage:
    """What a build stage leaves in its image, as far as running it goes."""

    name: str
    base: str
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    expose: list[int] = field(default_factory=list)
    user: str = "root"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    copies: list[list[str]] = field(default_factory=list)  # from the build context only


def instructions(path: Path) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        keyword, _, rest = (logical + line).partition(" ")
        logical = ""
        yield keyword.upper(), rest.strip()


def stages(path: Path) -> dict[str, Stage]:
    """The file's stages by name, in order; a stage built FROM another starts as its copy."""
    found: dict[str, Stage] = {}
    args: dict[str, str] = {}
    stage: Stage | None = None
    for keyword, rest in instructions(path):
        if keyword == "ARG":
            name, sep, default = rest.partition("=")
            if sep:
                args.setdefault(name, default)
            continue
        if keyword == "FROM":
            base, _, name = re.sub(r"(?i)\s+as\s+", " AS ", rest).partition(" AS ")
            parent = found.get(base)
            stage = Stage(name or f"stage-{len(found)}", base)
            if parent is not None:
                stage.env, stage.volumes = dict(parent.env), list(parent.volumes)
                stage.expose, stage.user = list(parent.expose), parent.user
                stage.entrypoint, stage.cmd = list(parent.entrypoint), list(parent.cmd)
                stage.healthcheck = list(parent.healthcheck)
            found[stage.name] = stage
            continue
        assert stage is not None, f"{path.name}: {keyword} before FROM"
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, sep, value = item.partition("=")
                assert sep, f"{path.name}: write ENV as KEY=VALUE ({item})"
                stage.env[name] = value
        elif keyword == "VOLUME":
            stage.volumes += json.loads(rest) if rest.startswith("[") else rest.split()
        elif keyword == "EXPOSE":
            stage.expose += [int(port.split("/")[0]) for port in rest.split()]
        elif keyword == "USER":
            stage.user = rest
        elif keyword == "ENTRYPOINT":
            stage.entrypoint = json.loads(rest)
        elif keyword == "CMD":
            stage.cmd = json.loads(rest)
        elif keyword == "HEALTHCHECK":
            _, _, command = rest.partition("CMD ")
            stage.healthcheck = json.loads(command)
        elif keyword == "RUN":
            stage.runs.append(re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], m[0]), rest))
        elif keyword == "COPY" and "--from=" not in rest:
            stage.copies.append(shlex.split(rest))
    return found


def final_stage(path: Path, target: str | None = None) -> Stage:
    """The stage `docker build --target` builds: the named one, else the last."""
    built = stages(path)
    return built[target] if target else list(built.values())[-1]


def service_stage(service: Service) -> Stage:
    build = service["build"]
    return final_stage(Path(build["context"]) / build["dockerfile"], build.get("target"))


# ---- lint and resolve --------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    # Style findings fail too; a rule is ignored only inline, with its reason beside it.
    done = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_ignored_hadolint_rule_says_why() -> None:
    for dockerfile in DOCKERFILES:
        lines = dockerfile.read_text().splitlines()
        for i, line in enumerate(lines):
            if "hadolint ignore=" in line:
                rules = line.split("=", 1)[1].split(",")
                reason = "\n".join(lines[max(0, i - 4) : i])
                for rule in rules:
                    assert rule.strip() in reason, f"{dockerfile.name}:{i + 1}: why {rule}?"


@pytest.mark.parametrize("name", VARIANTS)
def test_compose_config_is_valid_and_starts_what_it_should(name: str) -> None:
    done = compose(VARIANTS[name], "config", "-q")
    assert done.returncode == 0, done.stderr
    assert set(services(name)) == VARIANTS[name].services


def test_every_image_is_pinned() -> None:
    images = [s["image"] for s in services("all").values() if "image" in s]
    for dockerfile in DOCKERFILES:
        built = stages(dockerfile)
        images += [s.base for s in built.values() if s.base not in built]
    for image in images:
        _, _, tag = image.rpartition(":")
        assert re.search(r"\d", tag) and "latest" not in tag, f"{image} is not pinned"


def test_redis_is_durable_and_health_checked() -> None:
    """As `sd3-serve dev` runs its own (REDIS_DURABILITY), its data on a volume."""
    redis = services("default")["redis"]
    command = redis["command"]
    flags = dict(zip(command[1::2], command[2::2], strict=True))
    for flag, value in zip(REDIS_DURABILITY[::2], REDIS_DURABILITY[1::2], strict=True):
        assert flags[flag] == value, flag
    assert volume(redis, flags["--dir"])["type"] == "volume"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_the_api_waits_for_redis_and_publishes_its_port() -> None:
    api = services("default")["api"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert published(api) == {8000: 8000}
    assert service_stage(api).expose == [8000]


def test_the_gpu_worker_reserves_an_nvidia_gpu() -> None:
    worker = services("gpu")["worker"]
    assert worker["build"]["target"] == "cuda"
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert worker["environment"][env_var("model")].startswith("/models/")
    assert volume(worker, "/models")["read_only"] is True
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize(("name", "scheme"), [("cpu", "file"), ("gpu", "file"), ("s3", "s3")])
def test_the_api_and_the_workers_share_one_result_store(name: str, scheme: str) -> None:
    ours = [s for s in services(name).values() if "build" in s]  # the sd3-serve images
    (store,) = {s["environment"][env_var("result_store")] for s in ours}
    assert urlsplit(store).scheme == scheme
    if scheme == "file":  # one named volume, mounted where the store's path is
        mounts = [volume(s, urlsplit(store).path) for s in ours]
        assert {m["type"] for m in mounts} == {"volume"}
        assert len({m["source"] for m in mounts}) == 1


# ---- the API's secrets -------------------------------------------------------------------

WEBHOOK_SECRET = env_var("webhook_secret")
KEYS_FILE = env_var("api_keys_file")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """ApiSettings reads os.environ too: keep this process's SD3SERVE_ variables out."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def api_settings(service: Service) -> ApiSettings:
    """The settings the API would start with, from the service's environment alone."""
    values = {
        name.removeprefix(ENV_PREFIX).lower(): value
        for name, value in service.get("environment", {}).items()
        if name.startswith(ENV_PREFIX) and value is not None
    }
    # As BaseSettings: its constructor, not the subclass's model fields, takes `_env_file`.
    cls: type[BaseSettings] = ApiSettings
    built = cls(_env_file=None, **values)
    assert isinstance(built, ApiSettings)
    return built


@pytest.mark.parametrize("name", VARIANTS)
def test_the_webhook_secret_is_the_apis_and_unset_by_default(name: str, clean_env: None) -> None:
    found = services(name)
    # Declared without a value: where compose runs with it unset, the container has none, and
    # the API starts (refusing webhooks).
    assert found["api"]["environment"][WEBHOOK_SECRET] is None
    assert api_settings(found["api"]).webhook_secret is None
    for other, service in found.items():
        if other != "api":
            assert WEBHOOK_SECRET not in service.get("environment", {}), other


@pytest.mark.parametrize("source", ["shell", "env-file"])
@pytest.mark.parametrize("value", ["generated", "empty"])
def test_the_webhook_secret_passes_through(
    source: str, value: str, tmp_path: Path, clean_env: None
) -> None:
    """From the shell or an env file (docker/.env), through the S3 override's own environment;
    an empty value means no webhooks, as an unset one does."""
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode() if value == "generated" else ""
    variant = VARIANTS["s3"]
    env_file = os.devnull
    if source == "shell":
        variant = replace(variant, env=((WEBHOOK_SECRET, secret),))
    else:
        env_file = str(tmp_path / ".env")
        Path(env_file).write_text(f"{WEBHOOK_SECRET}={secret}\n")
    done = compose(variant, "config", "--format", "json", env_file=env_file)
    assert done.returncode == 0, done.stderr
    api = json.loads(done.stdout)["services"]["api"]
    assert api["environment"][WEBHOOK_SECRET] == secret
    assert urlsplit(api["environment"][env_var("result_store")]).scheme == "s3"
    webhook = api_settings(api).webhook_secret
    if secret:
        assert webhook is not None and webhook.get_secret_value() == secret
    else:
        assert webhook is None


def test_the_keys_override_mounts_the_keys_file_into_the_api_alone(clean_env: None) -> None:
    assert KEYS_FILE not in services("default")["api"]["environment"], "keys are opt-in"
    api = services("keys")["api"]
    (secret,) = api["secrets"]
    # The variable names the file where the secret is mounted (read-only: a secret always is).
    assert api["environment"][KEYS_FILE] == secret["target"]
    assert api_settings(api).api_keys_file == Path(secret["target"])
    source = config("keys")["secrets"][secret["source"]]
    assert source["file"] == dict(KEYS_ENV)[KEYS_HOST_FILE]
    # Given with the S3 override too, the API keeps both.
    everything = services("all")
    assert everything["api"]["environment"][KEYS_FILE] == secret["target"]
    assert urlsplit(everything["api"]["environment"][env_var("result_store")]).scheme == "s3"
    for name, service in everything.items():
        if name != "api":
            assert not service.get("secrets"), name
            assert KEYS_FILE not in service.get("environment", {}), name


@pytest.mark.parametrize("value", ["unset", ""])
def test_the_keys_override_refuses_to_run_without_its_file(value: str) -> None:
    """Rather than mount what an empty path resolves to, or start an open API."""
    env = () if value == "unset" else ((KEYS_HOST_FILE, value),)
    done = compose(replace(VARIANTS["keys"], env=env), "config", "-q")
    assert done.returncode != 0
    assert KEYS_HOST_FILE in done.stderr


# ---- images ------------------------------------------------------------------------------


def test_the_api_image_runs_the_api_without_torch() -> None:
    built = stages(API_DOCKERFILE)
    api = final_stage(API_DOCKERFILE)
    assert api.cmd == ["sd3-serve", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert "/healthz" in " ".join(api.healthcheck)
    assert api.user.split(":")[0].isdigit() and not api.user.startswith("0")
    assert "PROMETHEUS_MULTIPROC_DIR" not in api.env
    installs = [run for stage in built.values() for run in stage.runs if "pip install" in run]
    assert any("[api]" in run for run in installs)
    assert not any("torch" in run or "[worker]" in run for run in installs)


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_the_worker_images_run_a_worker(target: str) -> None:
    built = stages(WORKER_DOCKERFILE)
    assert list(built)[-1] == "cuda", "a plain `docker build` must build the CUDA worker"
    stage = built[target]
    assert stage.cmd == ["sd3-serve", "worker"]
    assert stage.expose == [WorkerSettings.model_fields["metrics_port"].default]
    assert "/healthz" in " ".join(stage.healthcheck)
    assert stage.user.split(":")[0].isdigit() and not stage.user.startswith("0")
    assert stage.env["HF_HOME"] in stage.volumes
    torch_index = {"cpu": "https://download.pytorch.org/whl/cpu", "cuda": "whl/cu12"}[target]
    installs = [run for s in built.values() for run in s.runs if "torch==2.13.0" in run]
    assert any(torch_index in run for run in installs), installs
    base = stage.base if stage.base not in built else built[stage.base].base
    assert base.startswith({"cpu": "python:3.11.", "cuda": "nvidia/cuda:"}[target])


# ---- the build context -------------------------------------------------------------------


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) in file order, with Docker's wildcards."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip("/"))
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?|\[[^]]*\])", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, token.replace("[!", "[^") if token.startswith("[") else re.escape(token)
            )
        rules.append((negate, re.compile(regex + r"\Z")))
    return rules


def in_context(relative: str) -> bool:
    """Whether the Docker daemon receives the file: the last rule matching it or a parent wins."""
    parts = relative.split("/")
    paths = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    sent = True
    for negate, regex in dockerignore_rules():
        if any(regex.match(p) for p in paths):
            sent = negate
    return sent


def test_the_build_context_leaves_out_everything_but_the_package() -> None:
    for kept in ("pyproject.toml", "README.md", "service/app.py", "common/keys.py"):
        assert in_context(kept), kept
    assert in_context("worker/models/sd3-scenes/transformer/diffusion_pytorch_model.safetensors")
    for dropped in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_docker.py",
        "training/run.py",
        "docs/img/loss_transformer.png",
        "worker/__pycache__/main.cpython-311.pyc",
        "sd3serve-results/job/0.png",
        ".env",
        "deploy/kustomization.yaml",
    ):
        assert not in_context(dropped), dropped


def replay_copies(dockerfile: Path, into: Path) -> None:
    """Lay out what the file's COPY instructions put in a build stage, context rules applied."""
    for stage in stages(dockerfile).values():
        for copy in stage.copies:
            *sources, destination = [arg for arg in copy if not arg.startswith("--")]
            for source in sources:
                origin = ROOT / source
                assert origin.exists(), f"{dockerfile.name} copies {source}, which is missing"
                files = [origin] if origin.is_file() else sorted(origin.rglob("*"))
                for path in files:
                    relative = path.relative_to(ROOT).as_posix()
                    if not path.is_file() or not in_context(relative):
                        continue
                    inside = path.relative_to(origin) if origin.is_dir() else Path(path.name)
                    if origin.is_file() and not destination.endswith("/"):
                        inside = Path()
                    target = into / destination.lstrip("/") / inside
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)


@pytest.mark.parametrize(
    ("dockerfile", "must_hold"),
    [
        (API_DOCKERFILE, "service/app.py"),
        (WORKER_DOCKERFILE, "worker/models/sd3-scenes/transformer/config.json"),
    ],
    ids=["api", "worker"],
)
def test_the_copied_context_builds_the_package(
    dockerfile: Path, must_hold: str, tmp_path: Path
) -> None:
    """`pip install /src[...]` in the image gets only what COPY and .dockerignore let through."""
    replay_copies(dockerfile, tmp_path / "root")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    done = subprocess.run(
        [*pip, "-w", str(tmp_path / "dist"), str(tmp_path / "root" / "src")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert must_hold in names
    assert any(n.endswith("entry_points.txt") for n in names)
    if dockerfile == WORKER_DOCKERFILE:  # the bundled model, weights and all
        model = ROOT / "worker" / "models" / "sd3-scenes"
        shipped = {p.relative_to(ROOT).as_posix() for p in model.rglob("*") if p.is_file()}
        assert shipped <= names, shipped - names


# ---- monitoring --------------------------------------------------------------------------


def test_prometheus_scrapes_the_api_and_every_worker() -> None:
    found = services("all")
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    api_port = service_stage(found["api"]).expose[0]
    assert jobs["sd3-serve-api"]["static_configs"] == [{"targets": [f"api:{api_port}"]}]
    workers = {name for name, s in found.items() if "build" in s and name != "api"}
    (dns,) = jobs["sd3-serve-worker"]["dns_sd_configs"]
    assert set(dns["names"]) == workers
    assert {dns["port"]} == {p for w in workers for p in service_stage(found[w]).expose}
    assert volume(found["prometheus"], "/etc/prometheus/prometheus.yml")["source"] == str(
        DOCKER / "prometheus.yml"
    )
    for rules in prometheus["rule_files"]:
        source = Path(volume(found["prometheus"], rules)["source"])
        assert source == ROOT / "deploy/components/monitoring/alerts.yaml"
        assert source.is_file(), f"{source} is missing (compose would mount a directory)"
        assert yaml.safe_load(source.read_text())["groups"], source


def test_promtool_accepts_the_prometheus_config_and_its_rules(tmp_path: Path) -> None:
    """The config as Prometheus would load it, with each rules file where compose mounts it
    from (promtool reads them too)."""
    prometheus = services("all")["prometheus"]
    loaded = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    loaded["rule_files"] = [volume(prometheus, r)["source"] for r in loaded["rule_files"]]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(loaded))
    done = subprocess.run(
        [tool("promtool"), "check", "config", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_grafana_has_the_prometheus_datasource_and_the_dashboard() -> None:
    found = services("all")
    grafana = found["grafana"]
    provisioning = Path(volume(grafana, "/etc/grafana/provisioning")["source"])
    assert provisioning == DOCKER / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    (datasource,) = sources["datasources"]
    port = published(found["prometheus"])[9090]
    assert datasource["url"] == f"http://prometheus:{port}"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "sd3-serve.yaml").read_text())[
        "providers"
    ]
    dashboards = Path(volume(grafana, provider["options"]["path"])["source"])
    assert dashboards == ROOT / "deploy/components/monitoring/dashboards"
    files = sorted(dashboards.glob("*.json"))
    assert files, f"no dashboard in {dashboards}"
    for path in files:
        dashboard = json.loads(path.read_text())
        # A panel's datasource is the provisioned one, a variable choosing among datasources of
        # its type (which finds the provisioned one), or Grafana's own (annotations).
        choosers = [
            v["name"]
            for v in dashboard.get("templating", {}).get("list", [])
            if v["type"] == "datasource" and v["query"] == datasource["type"]
        ]
        known = {datasource["uid"], "-- Grafana --"}
        known |= {f"${name}" for name in choosers} | {f"${{{name}}}" for name in choosers}
        for ref in datasource_refs(dashboard):
            assert ref["uid"] in known, f"{path.name}: datasource {ref} is not provisioned"


def datasource_refs(node: object) -> Iterator[dict[str, str]]:
    if isinstance(node, dict):
        ref = node.get("datasource")
        if isinstance(ref, dict) and "uid" in ref:
            yield ref
        for value in node.values():
            yield from datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from datasource_refs(item)


# ---- the rehearsal -----------------------------------------------------------------------

# `mc`, as far as the bucket-creation step uses it, against moto through boto3.
MC_STUB = """\
import json, sys
from pathlib import Path
import boto3
aliases = Path(__file__).with_name("mc-aliases.json")
args = sys.argv[1:]
if args[:2] == ["alias", "set"]:
    known = json.loads(aliases.read_text()) if aliases.exists() else {}
    known[args[2]] = args[3:6]
    aliases.write_text(json.dumps(known))
elif args[:1] == ["mb"]:
    (target,) = [a for a in args[1:] if not a.startswith("-")]
    alias, _, bucket = target.partition("/")
    url, key, secret = json.loads(aliases.read_text())[alias]
    s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id=key,
                      aws_secret_access_key=secret, region_name="us-east-1")
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        if "--ignore-existing" not in args:
            raise
else:
    sys.exit(f"mc stub: {args} is not rehearsed")
"""


@dataclass
class Local:
    """Where compose's names point on this machine: `host:port` of the stand-ins, volumes."""

    work: Path
    hosts: dict[str, str]
    service_names: frozenset[str]
    # Each secret's file on this machine, by the secret's name.
    secrets: dict[str, Path] = field(default_factory=dict)

    def paths(self, name: str, service: Service, stage: Stage | None) -> dict[str, Path]:
        """A folder per mount: one per named volume (so services share it), one per anonymous
        volume the image declares; and each secret's file, where the service mounts it."""
        mounts: dict[str, Path] = {}
        for mount in service.get("volumes", []):
            if mount["type"] == "volume":
                mounts[mount["target"]] = self.work / "volumes" / mount["source"]
            else:
                mounts[mount["target"]] = Path(mount["source"])
        for target in stage.volumes if stage else []:
            mounts.setdefault(target, self.work / "anonymous" / name / target.strip("/"))
        for path in mounts.values():
            path.mkdir(parents=True, exist_ok=True)
        for secret in service.get("secrets", []):
            target = secret.get("target", f"/run/secrets/{secret['source']}")
            mounts[target] = self.secrets[secret["source"]]
        return mounts

    def localise(self, value: str, paths: dict[str, Path]) -> str:
        for host, local in self.hosts.items():
            value = value.replace(host, local)
        for target in sorted(paths, key=len, reverse=True):
            value = re.sub(rf"(?<![\w.-]){re.escape(target)}(?![\w.-])", str(paths[target]), value)
        for name in self.service_names:
            assert not re.search(rf"(//|@){re.escape(name)}[:/]", value), (
                f"{value!r} names the compose service {name}, which has no local stand-in"
            )
        return value

    def environment(self, name: str, service: Service, stage: Stage | None) -> dict[str, str]:
        """The container's environment: the image's ENV, then compose's, localised; the host's
        own variables only for what a process needs (PATH, HOME), never its settings."""
        paths = self.paths(name, service, stage)
        image = {k: v for k, v in (stage.env if stage else {}).items() if "$" not in v}
        # A variable without a value passes compose's own through, only where it is set: the
        # variant had none of them, so the container gets none.
        declared = image | {
            k: unescape(v) for k, v in service.get("environment", {}).items() if v is not None
        }
        host = {k: v for k, v in os.environ.items() if not k.startswith((ENV_PREFIX, "AWS_"))}
        return host | {k: self.localise(v, paths) for k, v in declared.items()}


def argv(command: list[str], ports: dict[int, int]) -> list[str]:
    """A container command run here: the venv's programs, loopback, local ports."""
    programs = {"sd3-serve": str(BIN / "sd3-serve"), "python": sys.executable}
    out = []
    for arg in command:
        arg = programs.get(arg, arg).replace("0.0.0.0", "127.0.0.1")
        for inside, local in ports.items():
            arg = re.sub(rf"(?<!\d){inside}(?!\d)", str(local), arg)
        out.append(arg)
    return out


def command_of(service: Service, stage: Stage | None) -> list[str]:
    """Compose's entrypoint and command where it sets them, else the image's."""
    entrypoint: list[str] = service.get("entrypoint") or (stage.entrypoint if stage else [])
    command: list[str] = service.get("command") or (stage.cmd if stage else [])
    return [unescape(arg) for arg in entrypoint + command]


def passes(healthcheck: list[str], env: dict[str, str]) -> Callable[[], bool]:
    def check() -> bool:
        done = subprocess.run(healthcheck, env=env, capture_output=True, timeout=10)
        return done.returncode == 0

    return check


def start(
    stack: Stack, local: Local, name: str, service: Service, extra_env: dict[str, str]
) -> dict[int, int]:
    """Run a service's container command; return once its image's HEALTHCHECK passes, with
    the local port of each port compose publishes."""
    stage = service_stage(service)
    ports = {target: free_port() for target in published(service).values()}
    env = local.environment(name, service, stage) | extra_env
    stack.start(name, argv(command_of(service, stage), ports), env)
    healthcheck = argv(stage.healthcheck, ports)
    wait_until(passes(healthcheck, env), stack, f"{name}'s HEALTHCHECK", START_TIMEOUT_S)
    return ports


@pytest.mark.stack
@pytest.mark.parametrize("variant", ["cpu", "s3"])
def test_rehearsal_generates_through_the_compose_wiring(variant: str, tmp_path: Path) -> None:
    found = services(variant)
    local = Local(tmp_path, {}, frozenset(found))
    stack = Stack()
    try:
        redis_url = start_redis(stack, tmp_path)
        local.hosts[f"redis:{REDIS_PORT}"] = urlsplit(redis_url).netloc
        s3 = None
        if "minio" in found:  # moto stands in for MinIO; the one-shot step makes the bucket
            s3 = start_moto(stack)
            local.hosts[f"minio:{MINIO_PORT}"] = urlsplit(s3.endpoint_url).netloc
            stub = tmp_path / "bin" / "mc"
            stub.parent.mkdir()
            stub.write_text(f"#!{sys.executable}\n{MC_STUB}")
            stub.chmod(0o755)
            init = found["minio-init"]
            env = local.environment("minio-init", init, None)
            env["PATH"] = f"{stub.parent}{os.pathsep}{env['PATH']}"
            done = subprocess.run(
                command_of(init, None), env=env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stdout + done.stderr

        (api_port,) = start(stack, local, "api", found["api"], {}).values()
        url = f"http://127.0.0.1:{api_port}"
        start(
            stack,
            local,
            "worker-cpu",
            found["worker-cpu"],
            # Its metrics on a free loopback port, not 0.0.0.0:9400 (the HEALTHCHECK must follow).
            {env_var("metrics_host"): "127.0.0.1", env_var("metrics_port"): str(free_port())},
        )
        with closing(httpx.Client(base_url=url, timeout=120)) as client:
            api = Api(url, client)
            wait_until(lambda: worker_count(api) == 1, stack, "a warm worker", START_TIMEOUT_S)
            job = submit(api, prefer="wait=60", prompt="a red circle", steps=2).json()
            assert job["status"] == "succeeded", job
            (link,) = job["links"]["images"]
            image, _ = fetch_image(api, link)
            assert image.size == (job["params"]["width"], job["params"]["height"])

        with Redis.from_url(redis_url) as redis:  # this Redis, not one the defaults point at
            assert redis.exists(keys.job(job["id"]))
        store = urlsplit(found["api"]["environment"][env_var("result_store")])
        if s3 is None:  # in the volume the API and the worker share
            stored = [p for p in (tmp_path / "volumes").rglob("*") if job["id"] in str(p)]
        else:
            listing = s3.client.list_objects_v2(Bucket=store.netloc)
            stored = [o["Key"] for o in listing.get("Contents", []) if job["id"] in o["Key"]]
        assert stored, f"no image of job {job['id']} in {store.geturl()}"
    finally:
        stack.stop()


@pytest.mark.stack
def test_rehearsal_the_keys_override_locks_the_api(tmp_path: Path) -> None:
    """The API as compose.keys.yaml starts it, its keys file where the secret is mounted."""
    found = services("keys")
    key = new_key()
    keys_file = tmp_path / "api-keys"
    keys_file.write_text(key_line("rehearsal", key) + "\n")
    (secret,) = found["api"]["secrets"]
    local = Local(tmp_path, {}, frozenset(found), {secret["source"]: keys_file})
    stack = Stack()
    try:
        redis_url = start_redis(stack, tmp_path)
        local.hosts[f"redis:{REDIS_PORT}"] = urlsplit(redis_url).netloc
        (api_port,) = start(stack, local, "api", found["api"], {}).values()
        with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=30) as client:
            assert client.get("/v1/models").status_code == 401
            wrong = {"Authorization": f"Bearer {new_key()}"}
            assert client.get("/v1/models", headers=wrong).status_code == 401
            right = {"Authorization": f"Bearer {key}"}
            assert client.get("/v1/models", headers=right).status_code == 200
    finally:
        stack.stop()


# ---- names -------------------------------------------------------------------------------

# What each sd3-serve subcommand reads its settings from.
SETTINGS_OF: dict[str, type[BaseSettings]] = {"api": ApiSettings, "worker": WorkerSettings}


def subcommands() -> set[str]:
    actions = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_command_and_setting_named_in_compose_exists(name: str) -> None:
    ran = 0
    for service_name, service in services(name).items():
        if "build" not in service:
            continue  # third-party images: their variables are theirs
        stage = service_stage(service)
        command = command_of(service, stage)
        assert command[0] == "sd3-serve", (service_name, command)
        assert command[1] in subcommands(), (service_name, command)
        fields = {env_var(f) for f in SETTINGS_OF[command[1]].model_fields}
        named = set(stage.env) | set(service.get("environment", {}))
        ours = {n for n in named if n.startswith(ENV_PREFIX)}
        assert ours <= fields, (service_name, sorted(ours - fields))
        ran += 1
    assert ran >= 1  # every variant runs the API at least
