"""Offline checks of deploy/: every overlay builds, validates, and hangs together.

No cluster is needed. `kubectl kustomize` builds each overlay; `kubernetes-validate --strict`
checks the core objects against the Kubernetes OpenAPI schemas of K8S_VERSION. KEDA and the
Prometheus operator publish their schemas only as CRDs, which cannot be fetched here, so the
fields their controllers act on are checked directly: what a ScaledObject scales and on which
Redis list, where its TriggerAuthentication reads the password, what a PodMonitor selects.
Everything the application itself reads is checked against the application: every SD3SERVE_
variable is a field of the settings class of the process that gets it, with a value that class
accepts; every `sd3-serve` command line parses with the real CLI parser; each queue name is
computed with common.keys.queue_name from the model the worker pool serves.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from common.keys import queue_name
from common.settings import ENV_PREFIX, env_var
from service.auth import KeysFileError, key_line, load_key_ring, new_key
from service.cli import parser
from service.dev import REDIS_DURABILITY
from service.settings import ApiSettings
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SECRET_EXAMPLE = DEPLOY / "secret.example.yaml"
ALERTS = DEPLOY / "components" / "monitoring" / "alerts.yaml"
DASHBOARD = DEPLOY / "components" / "monitoring" / "dashboards" / "sd3-serve.json"

# The Kubernetes version the core objects are validated against, pinned so that a newer
# kubernetes-validate (which defaults to its newest schemas) cannot change what passes. 1.33 is
# the oldest minor these manifests claim to support: about a year of releases behind kubectl's
# 1.37, for managed clusters on slow or extended-support channels. Validating against the oldest
# catches a field that only a newer release knows; nothing used here is deprecated or removed
# later (apps/v1, autoscaling/v2, policy/v1, networking.k8s.io/v1 are GA), and the overlays pass
# the 1.37 schemas as well. Raise it as old minors leave your providers' support.
K8S_VERSION = "1.33.0"

OVERLAYS = ("cpu-demo", "eks", "gke", "two-pools")
# What each overlay is for, as the assertions below expect it.
CPU_ONLY = {"cpu-demo"}
IN_CLUSTER_REDIS = {"cpu-demo", "gke", "two-pools"}
WITH_MONITORING = {"eks", "gke", "two-pools"}
# The node label each GPU overlay places its workers by (nodeSelector or node affinity).
PLACEMENT = {
    "gke": "cloud.google.com/gke-accelerator",
    "eks": "karpenter.k8s.aws/instance-gpu-name",
    "two-pools": "nvidia.com/gpu.memory",
}
# Kinds that kubernetes-validate has no schema for (custom resources); checked field by field.
CUSTOM_KINDS = {
    "ScaledObject",
    "TriggerAuthentication",
    "PodMonitor",
    "ServiceMonitor",
    "PrometheusRule",
}

# Environment variables that are not settings but that a process of ours reads: boto3's (for an
# s3:// result store) in the API and the worker; huggingface_hub's in the worker and the
# fetch-model init container.
AWS_VARS = {
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
}
HF_VARS = {"HF_TOKEN", "HF_HOME", "HF_HUB_OFFLINE"}
SETTINGS: dict[str, type[BaseSettings]] = {"api": ApiSettings, "worker": WorkerSettings}
ALLOWED_ENV = {
    "api": {env_var(f) for f in ApiSettings.model_fields} | AWS_VARS,
    "worker": {env_var(f) for f in WorkerSettings.model_fields} | AWS_VARS | HF_VARS,
    # The init container reads the pool's model settings (to know where and what) and the hub's.
    "fetch-model": {env_var(f) for f in WorkerSettings.model_fields} | HF_VARS,
}
HUB_INIT = "fetch-model"
# The volume types Pod Security "restricted" admits.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
IMAGE_PREFIX = "ghcr.io/sd3-serve/"

Obj = dict[str, Any]


# ---- tools and builds -------------------------------------------------------------------------


def tool(name: str) -> str:
    """A CLI of the dev extra: next to this Python first (the virtualenv), then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def run(
    cmd: list[str], stdin: str | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


@functools.cache
def build_text(path: str) -> str:
    """`kubectl kustomize` of a kustomization under deploy/ (e.g. "overlays/gke")."""
    result = run([tool("kubectl"), "kustomize", str(DEPLOY / path)])
    assert result.returncode == 0, f"kubectl kustomize deploy/{path} failed:\n{result.stderr}"
    return result.stdout


def load_all(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def _build(overlay: str) -> tuple[Obj, ...]:
    return tuple(load_all(build_text(f"overlays/{overlay}")))


def build(overlay: str) -> list[Obj]:
    return list(_build(overlay))


def validate(text: str) -> subprocess.CompletedProcess[str]:
    return run(
        [tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, "--quiet", "-"], stdin=text
    )


# ---- accessors --------------------------------------------------------------------------------


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def component(obj: Obj) -> str | None:
    labels: dict[str, str] = obj["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component")


def deployments(objs: list[Obj], role: str) -> list[Obj]:
    found = [d for d in of_kind(objs, "Deployment") if component(d) == role]
    assert found, f"no {role} Deployment"
    return found


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def containers(workload: Obj) -> list[Obj]:
    """Init containers, then containers."""
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(workload: Obj, name: str) -> Obj:
    found = [c for c in containers(workload) if c["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']}: no container {name}"
    return found[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]


def process_of(c: Obj) -> str | None:
    """Which of our processes a container runs: api, worker, fetch-model; None: not ours."""
    if not c["image"].startswith(IMAGE_PREFIX):
        return None
    argv = [*c.get("command", []), *c.get("args", [])]
    if argv and Path(argv[0]).name == "sd3-serve":
        return str(argv[1])
    return str(c["name"])


def sd3_containers(objs: list[Obj], process: str) -> list[tuple[Obj, Obj]]:
    return [(w, c) for w in workloads(objs) for c in containers(w) if process_of(c) == process]


def config_map_data(objs: list[Obj], name: str) -> dict[str, str]:
    data: dict[str, str] = named(objs, "ConfigMap", name).get("data", {})
    return data


def secret_data(objs: list[Obj], name: str) -> dict[str, str] | None:
    """A Secret of the build (stringData or base64 data), or None where the user creates it."""
    found = [s for s in of_kind(objs, "Secret") if s["metadata"]["name"] == name]
    if not found:
        return None
    secret = found[0]
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    plain: dict[str, str] = secret.get("stringData", {})
    return data | plain


def example_secrets() -> dict[str, dict[str, str]]:
    return {s["metadata"]["name"]: s["stringData"] for s in load_all(SECRET_EXAMPLE.read_text())}


def known_secret_keys(objs: list[Obj]) -> dict[str, set[str]]:
    """Secrets a deployment of this overlay has: the build's own, else the documented ones."""
    keys = {name: set(data) for name, data in example_secrets().items()}
    for secret in of_kind(objs, "Secret"):
        name = secret["metadata"]["name"]
        keys[name] = set(secret_data(objs, name) or {})
    return keys


def environment(objs: list[Obj], c: Obj) -> dict[str, str | None]:
    """A container's variables: name -> value where the build knows it (None: user's Secret)."""
    env: dict[str, str | None] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env |= config_map_data(objs, source["configMapRef"]["name"])
        elif "secretRef" in source:
            env |= secret_data(objs, source["secretRef"]["name"]) or {}
    for var in c.get("env", []):
        value: str | None = var.get("value")
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            value = (secret_data(objs, ref["name"]) or {}).get(ref["key"])
        env[var["name"]] = value
    return env


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings classes read os.environ too: keep this process's SD3SERVE_ variables out."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def settings(cls: type[BaseSettings], env: dict[str, str | None]) -> Any:
    """`cls` built from the known SD3SERVE_ values of `env` alone (no .env file)."""
    values: dict[str, Any] = {
        name.removeprefix(ENV_PREFIX).lower(): value
        for name, value in env.items()
        if name.startswith(ENV_PREFIX) and value is not None
    }
    return cls(_env_file=None, **values)


def served_model(objs: list[Obj], worker: Obj) -> str:
    """The model name a worker Deployment serves, as the worker itself derives it."""
    env = environment(objs, container(worker, "worker"))
    name: str = settings(WorkerSettings, env).served_name
    return name


def api_env(objs: list[Obj]) -> dict[str, str | None]:
    (api,) = deployments(objs, "api")
    return environment(objs, container(api, "api"))


def job_timeout_s(objs: list[Obj]) -> int:
    timeout: int = settings(ApiSettings, api_env(objs)).job_timeout_s
    return timeout


# ---- builds and schemas -----------------------------------------------------------------------


def test_overlays_are_the_expected_ones() -> None:
    found = {p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml")}
    assert found == set(OVERLAYS)


def assert_validates(text: str, what: str) -> None:
    kinds = {o["kind"] for o in load_all(text)}
    assert {"Deployment", "ConfigMap", "ScaledObject"} <= kinds
    result = validate(text)
    report = result.stdout + result.stderr
    assert result.returncode == 0, f"{what} does not validate:\n{report}"
    # kubernetes-validate only warns on a kind it has no schema for: a misspelt apiVersion of a
    # core kind would pass unvalidated. Only the custom resources may be skipped.
    skipped = set(re.findall(r"schema for kind (\S+) with api version", report))
    assert skipped <= CUSTOM_KINDS, f"not validated: {skipped - CUSTOM_KINDS}"
    assert "ERROR" not in report


@pytest.mark.parametrize("path", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_builds_and_validates(path: str) -> None:
    assert_validates(build_text(path), f"deploy/{path}")


def test_validation_is_strict() -> None:
    """The check above would catch a misplaced field (strict: no unknown properties)."""
    (worker,) = deployments(build("gke"), "worker")
    worker = yaml.safe_load(yaml.safe_dump(worker))
    pod_spec(worker)["containers"][0]["startupProbes"] = {}
    result = validate(yaml.safe_dump(worker))
    assert result.returncode != 0
    assert "startupProbes" in result.stdout


def test_secret_example_validates() -> None:
    result = validate(SECRET_EXAMPLE.read_text())
    assert result.returncode == 0, result.stdout + result.stderr
    for data in example_secrets().values():
        assert all("CHANGE-ME" in v or v.endswith(".svc:6379") for v in data.values()), data


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_namespace(overlay: str) -> None:
    objs = build(overlay)
    (namespace,) = of_kind(objs, "Namespace")
    name = namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == name, obj["metadata"]["name"]


# ---- references between objects ---------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay: str) -> None:
    assert_references_resolve(build(overlay))


def assert_references_resolve(objs: list[Obj]) -> None:
    """Every ConfigMap, PVC and Secret key a pod or KEDA reads exists (Secrets: or is documented
    in deploy/secret.example.yaml, for the user to create)."""
    config_maps = {o["metadata"]["name"] for o in of_kind(objs, "ConfigMap")}
    claims = {o["metadata"]["name"] for o in of_kind(objs, "PersistentVolumeClaim")}
    secrets = known_secret_keys(objs)
    for w in workloads(objs):
        claims_here = claims | {
            t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])
        }
        volumes = {v["name"]: v for v in pod_spec(w).get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims_here
            if "secret" in v:
                known = secrets.get(v["secret"]["secretName"], set())
                for item in v["secret"].get("items", []):
                    assert item["key"] in known, (v["name"], item)
        for c in containers(w):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes or mount["name"] in claims_here, mount
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["key"] in secrets.get(ref["name"], set()), (c["name"], ref)
    for auth in of_kind(objs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets.get(ref["name"], set()), ref
    # And no settings ConfigMap lies unused.
    env_from = {
        s["configMapRef"]["name"]
        for w in workloads(objs)
        for c in containers(w)
        for s in c.get("envFrom", [])
    }
    for cm in of_kind(objs, "ConfigMap"):
        if any(key.startswith(ENV_PREFIX) for key in cm.get("data", {})):
            assert cm["metadata"]["name"] in env_from, cm["metadata"]["name"]


# ---- the application's own settings and command lines -----------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_names_are_settings_with_valid_values(overlay: str, clean_env: None) -> None:
    assert_env_is_settings(build(overlay), overlay)


def assert_env_is_settings(objs: list[Obj], overlay: str) -> None:
    for process, allowed in ALLOWED_ENV.items():
        found = sd3_containers(objs, process)
        if process == HUB_INIT and overlay in CPU_ONLY:
            assert not found, "the CPU demo serves the bundled model: nothing to download"
            continue
        assert found, f"no {process} container"
        for w, c in found:
            env = environment(objs, c)
            unknown = set(env) - allowed
            assert not unknown, f"{w['metadata']['name']}/{c['name']}: not settings: {unknown}"
            if process in SETTINGS:
                settings(SETTINGS[process], env)  # raises on a value the process would refuse


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_command_lines_parse(overlay: str) -> None:
    objs = build(overlay)
    seen: set[str] = set()
    for w in workloads(objs):
        for c in containers(w):
            argv = [*c.get("command", []), *c.get("args", [])]
            if not argv or Path(argv[0]).name != "sd3-serve":
                continue
            # The real parser: an unknown subcommand or option exits (argparse's error).
            try:
                args = parser().parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{w['metadata']['name']}/{c['name']}: {argv} does not parse")
            seen.add(args.command)
            if args.command == "api":
                ports = {p["name"]: p["containerPort"] for p in c["ports"]}
                assert args.host == "0.0.0.0"
                assert ports["http"] == args.port
    assert seen == {"api", "worker"}


# ---- the API ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api(overlay: str) -> None:
    objs = build(overlay)
    (api,) = deployments(objs, "api")
    name = api["metadata"]["name"]
    labels = pod_labels(api)
    assert selects(api["spec"]["selector"]["matchLabels"], labels)
    # Two replicas at least, held by the HPA (spec.replicas is left out so that a re-apply does
    # not fight the HPA).
    assert "replicas" not in api["spec"]
    (hpa,) = [
        h
        for h in of_kind(objs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == name
    ]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["maxReplicas"] >= 2
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    (pdb,) = of_kind(objs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert 1 <= pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    c = container(api, "api")
    assert c["resources"]["requests"]["cpu"]  # the HPA's utilisation is relative to it
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}
    (service,) = [s for s in of_kind(objs, "Service") if component(s) == "api"]
    assert selects(service["spec"]["selector"], labels)
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}


# ---- the API's secrets: webhooks and API keys --------------------------------------------------

API_SECRET = "sd3-serve-api"
API_KEYS_COMPONENT = "components/api-keys"
API_KEYS_SECRET = "sd3-serve-api-keys"
API_KEYS_VOLUME = "api-keys"


def build_with_component(overlay: str, path: str, tmp_path: Path) -> str:
    """An overlay with one more component, as a user's own kustomization would add it."""
    # kustomize refuses absolute paths to other kustomizations: relative ones, from tmp_path.
    here = tmp_path / "with-component"
    here.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "overlays" / overlay, here)],
        "components": [os.path.relpath(DEPLOY / path, here)],
    }
    (here / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = run([tool("kubectl"), "kustomize", str(here)])
    assert result.returncode == 0, f"{overlay} + {path} does not build:\n{result.stderr}"
    return result.stdout


def env_var_of(c: Obj, name: str) -> Obj | None:
    found = [v for v in c.get("env", []) if v["name"] == name]
    assert len(found) <= 1, f"{c['name']}: {name} twice"
    return found[0] if found else None


def named_volume(workload: Obj, name: str) -> Obj:
    found: list[Obj] = [v for v in pod_spec(workload).get("volumes", []) if v["name"] == name]
    assert len(found) == 1, f"{workload['metadata']['name']}: no volume {name}"
    return found[0]


def container_group(workload: Obj, c: Obj) -> int:
    pod = pod_spec(workload).get("securityContext", {})
    group: int = c.get("securityContext", {}).get("runAsGroup", pod.get("runAsGroup"))
    return group


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_webhook_secret_is_optional_and_keys_opt_in(overlay: str) -> None:
    """The webhook secret comes from an optional Secret, so an API without it starts (and refuses
    webhooks); no overlay names a keys file, whose absence would stop the API."""
    objs = build(overlay)
    (api,) = deployments(objs, "api")
    c = container(api, "api")
    webhook = env_var_of(c, env_var("webhook_secret"))
    assert webhook is not None
    assert webhook["valueFrom"]["secretKeyRef"] == {
        "name": API_SECRET,
        "key": env_var("webhook_secret"),
        "optional": True,
    }
    assert env_var("api_keys_file") not in api_env(objs)
    assert API_KEYS_VOLUME not in {v["name"] for v in pod_spec(api)["volumes"]}
    # The webhook secret and the keys are the API's alone.
    for w, worker in sd3_containers(objs, "worker"):
        names = {v["name"] for v in worker.get("env", [])}
        assert env_var("webhook_secret") not in names, w["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_keys_component(overlay: str, tmp_path: Path, clean_env: None) -> None:
    text = build_with_component(overlay, API_KEYS_COMPONENT, tmp_path)
    assert_validates(text, f"{overlay} + {API_KEYS_COMPONENT}")
    objs = load_all(text)
    assert_references_resolve(objs)
    assert_restricted(objs)
    assert_env_is_settings(objs, overlay)

    (api,) = deployments(objs, "api")
    c = container(api, "api")
    keys_file = api_env(objs)[env_var("api_keys_file")]
    assert keys_file is not None
    # The file the variable names is the Secret's `keys` item, in a read-only mount of it.
    volume = named_volume(api, API_KEYS_VOLUME)
    secret = volume["secret"]
    assert secret["secretName"] == API_KEYS_SECRET
    # Not optional: without the Secret the pod must wait, not start an open API.
    assert secret.get("optional", False) is False
    (item,) = secret["items"]
    assert item["key"] == "keys"
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == API_KEYS_VOLUME]
    assert mount["readOnly"] is True
    # A subPath mount would never see an updated Secret.
    assert "subPath" not in mount
    assert keys_file == f"{mount['mountPath']}/{item['path']}"
    # Readable by the API's group (the pod's fsGroup), not by others.
    assert secret["defaultMode"] & 0o007 == 0
    assert secret["defaultMode"] & 0o040
    assert pod_spec(api)["securityContext"]["fsGroup"] == container_group(api, c)
    assert settings(ApiSettings, api_env(objs)).api_keys_file == Path(keys_file)

    # It adds exactly that to the API, and touches nothing else.
    plain = {(o["kind"], o["metadata"]["name"]): o for o in build(overlay)}
    keyed = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    assert keyed.keys() == plain.keys()
    api_key = ("Deployment", api["metadata"]["name"])
    for key, obj in keyed.items():
        if key != api_key:
            assert obj == plain[key], key
    stripped = yaml.safe_load(yaml.safe_dump(api))
    spec = pod_spec(stripped)
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != API_KEYS_VOLUME]
    (stripped_c,) = [x for x in spec["containers"] if x["name"] == "api"]
    stripped_c["volumeMounts"] = [
        m for m in stripped_c["volumeMounts"] if m["name"] != API_KEYS_VOLUME
    ]
    stripped_c["env"] = [v for v in stripped_c["env"] if v["name"] != env_var("api_keys_file")]
    assert stripped == plain[api_key]


def test_example_api_secrets_stop_the_api_until_changed(tmp_path: Path, clean_env: None) -> None:
    """Applied unchanged, the example's placeholders must not run: a published webhook key or
    an empty keys file would be worse than an API that refuses to start."""
    examples = example_secrets()
    webhook = examples[API_SECRET][env_var("webhook_secret")]
    with pytest.raises(ValidationError, match="webhook_secret"):
        settings(ApiSettings, {env_var("webhook_secret"): webhook})
    keys_file = tmp_path / "keys"
    keys_file.write_text(examples[API_KEYS_SECRET]["keys"])
    with pytest.raises(KeysFileError, match="holds no key"):
        load_key_ring(keys_file, ApiSettings.model_fields["rate_limit"].default)
    # What deploy/README.md makes them with is accepted: `openssl rand -base64 32` after
    # `whsec_`, and the lines of `sd3-serve keys create`.
    made = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    assert settings(ApiSettings, {env_var("webhook_secret"): made}).webhook_secret is not None
    keys_file.write_text(
        key_line("alice", new_key()) + "\n" + key_line("bob", new_key(), "5/second")
    )
    ring = load_key_ring(keys_file, ApiSettings.model_fields["rate_limit"].default)
    assert ring is not None and len(ring) == 2


# ---- the workers and KEDA ---------------------------------------------------------------------


def node_label_keys(spec: Obj) -> set[str]:
    keys = set(spec.get("nodeSelector", {}))
    required = spec.get("affinity", {}).get("nodeAffinity", {})
    for term in required.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get(
        "nodeSelectorTerms", []
    ):
        keys |= {e["key"] for e in term.get("matchExpressions", [])}
    return keys


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers(overlay: str, clean_env: None) -> None:
    objs = build(overlay)
    timeout = job_timeout_s(objs)
    workers = deployments(objs, "worker")
    assert len(workers) == (2 if overlay == "two-pools" else 1)
    served = [served_model(objs, w) for w in workers]
    assert len(set(served)) == len(served), "two pools serve the same model"
    for w in workers:
        name = w["metadata"]["name"]
        spec = pod_spec(w)
        c = container(w, "worker")
        assert "replicas" not in w["spec"], f"{name}: KEDA owns the replica count"
        assert selects(w["spec"]["selector"]["matchLabels"], pod_labels(w))
        # Warm shutdown: a scale-down lets the running job finish.
        grace = spec["terminationGracePeriodSeconds"]
        assert grace >= ApiSettings.model_fields["job_timeout_s"].default
        assert grace > timeout, f"{name}: grace {grace} s <= job timeout {timeout} s"
        # Probes on the metrics port the worker is configured to serve.
        port = settings(WorkerSettings, environment(objs, c)).metrics_port
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": port}
        startup = c["startupProbe"]
        assert startup["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert startup["failureThreshold"] * startup["periodSeconds"] >= 20 * 60
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert "/tmp" in mounts
        gpu = c["resources"].get("limits", {}).get("nvidia.com/gpu")
        tolerations = spec.get("tolerations", [])
        if overlay in CPU_ONLY:
            assert gpu is None and not tolerations
            assert not spec.get("initContainers")
            assert "/models" not in mounts
            assert served == ["sd3-scenes"]
            continue
        assert gpu == 1
        assert {
            "key": "nvidia.com/gpu",
            "operator": "Exists",
            "effect": "NoSchedule",
        } in tolerations
        assert PLACEMENT[overlay] in node_label_keys(spec), f"{name}: not placed by GPU"
        assert "persistentVolumeClaim" in volumes[mounts["/models"]]
        model_dir = environment(objs, c)["SD3SERVE_MODEL"]
        assert model_dir is not None and model_dir.startswith("/models/")
        # The optional hub download: a token from an optional Secret, and a repository for
        # this model in the hub ConfigMap.
        init = container(w, HUB_INIT)
        token = next(v for v in init["env"] if v["name"] == "HF_TOKEN")
        assert token["valueFrom"]["secretKeyRef"]["optional"] is True
        assert {m["mountPath"] for m in init["volumeMounts"]} >= {"/models", "/etc/sd3-serve/hub"}
        hub = config_map_data(objs, "sd3-serve-hub")
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", hub[served_model(objs, w)])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaled_objects(overlay: str, clean_env: None) -> None:
    objs = build(overlay)
    scaled = of_kind(objs, "ScaledObject")
    workers = deployments(objs, "worker")
    targets = sorted(s["spec"]["scaleTargetRef"]["name"] for s in scaled)
    assert targets == sorted(w["metadata"]["name"] for w in workers), "one ScaledObject per pool"
    redis_url = api_env(objs).get("SD3SERVE_REDIS_URL")
    for so in scaled:
        spec = so["spec"]
        ref = spec["scaleTargetRef"]
        assert ref.get("apiVersion", "apps/v1") == "apps/v1"
        assert ref.get("kind", "Deployment") == "Deployment"
        worker = named(objs, "Deployment", ref["name"])
        assert component(worker) == "worker"
        assert spec["minReplicaCount"] == 0
        assert spec["maxReplicaCount"] >= 1
        assert spec["pollingInterval"] > 0 and spec["cooldownPeriod"] > 0
        # A new pool's first worker must start (and register its model, without which the API
        # refuses the model's jobs) before KEDA may take the pool to zero.
        assert spec["initialCooldownPeriod"] > 0
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        # The list RQ keeps this pool's queue in: the model the pool's worker serves.
        assert meta["listName"] == "rq:queue:" + queue_name(served_model(objs, worker))
        assert int(meta["listLength"]) >= 1
        # KEDA activates (0 -> 1) while the list is longer than activationListLength: 0 means
        # the first queued job starts a worker.
        assert int(meta["activationListLength"]) == 0
        if redis_url is not None:
            assert int(meta["databaseIndex"]) == int(urlsplit(redis_url).path.lstrip("/") or 0)
        auth = named(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        params = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
        assert "password" in params
        assert "address" in params or "address" in meta or "host" in meta


# ---- Redis --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis(overlay: str) -> None:
    objs = build(overlay)
    statefulsets = [s for s in of_kind(objs, "StatefulSet") if component(s) == "redis"]
    if overlay not in IN_CLUSTER_REDIS:
        assert not statefulsets and not of_kind(objs, "NetworkPolicy")
        return
    (redis,) = statefulsets
    c = container(redis, "redis")
    assert re.fullmatch(r"redis:7\.\d+\.\d+", c["image"]), "pin a Redis 7 release"
    args = c["args"]
    flags = dict(zip(args[::2], args[1::2], strict=True))
    # As `sd3-serve dev` runs its own.
    for flag, value in zip(REDIS_DURABILITY[::2], REDIS_DURABILITY[1::2], strict=True):
        assert flags[flag] == value, flag
    assert flags["--requirepass"] == "$(REDIS_PASSWORD)"
    password = next(v for v in c["env"] if v["name"] == "REDIS_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {
        "name": "sd3-serve-redis",
        "key": "redis-password",
    }
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {
        m["name"] for m in c["volumeMounts"] if m["mountPath"] == flags["--dir"]
    }
    (service,) = [s for s in of_kind(objs, "Service") if component(s) == "redis"]
    assert service["spec"]["clusterIP"] == "None"
    assert redis["spec"]["serviceName"] == service["metadata"]["name"]
    assert selects(service["spec"]["selector"], pod_labels(redis))
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]

    # Only the API, every worker pool and KEDA's operator reach it, on 6379 alone.
    (policy,) = of_kind(objs, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(redis))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    peers = rule["from"]
    in_namespace = [p["podSelector"]["matchLabels"] for p in peers if "namespaceSelector" not in p]
    clients = [*deployments(objs, "api"), *deployments(objs, "worker")]
    for client in clients:
        assert any(selects(sel, pod_labels(client)) for sel in in_namespace), client["metadata"]
    assert not any(selects(sel, pod_labels(redis)) for sel in in_namespace)
    (keda,) = [p for p in peers if "namespaceSelector" in p]
    assert keda["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "keda"}

    # Where the Secret is in the build (the demo), its three forms of one password agree, and
    # KEDA's address is one its operator resolves from another namespace.
    namespace = redis["metadata"]["namespace"]
    fqdn = f"{service['metadata']['name']}.{namespace}.svc:6379"
    for data in (secret_data(objs, "sd3-serve-redis"), example_secrets()["sd3-serve-redis"]):
        if data is None:
            continue
        url = urlsplit(data["SD3SERVE_REDIS_URL"])
        assert (url.hostname, url.port) == (service["metadata"]["name"], 6379)
        assert url.password == data["redis-password"]
        assert data["redis-address"] == fqdn


# ---- pod security -------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_restricted(overlay: str) -> None:
    assert_restricted(build(overlay))


def assert_restricted(objs: list[Obj]) -> None:
    """Pod Security Standard "restricted", which the namespace enforces."""
    for w in workloads(objs):
        spec = pod_spec(w)
        pod = spec.get("securityContext", {})
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for v in spec.get("volumes", []):
            kinds = set(v) - {"name"}
            assert kinds <= RESTRICTED_VOLUMES, (w["metadata"]["name"], v["name"], kinds)
        assert spec.get("automountServiceAccountToken") is False
        for c in containers(w):
            sc = c.get("securityContext", {})
            where = f"{w['metadata']['name']}/{c['name']}"
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", pod.get("runAsUser", 1)) != 0, where
            seccomp = sc.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], where


# ---- monitoring objects -------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitoring(overlay: str) -> None:
    objs = build(overlay)
    if overlay not in WITH_MONITORING:
        assert not [o for o in objs if o["apiVersion"].startswith("monitoring.coreos.com/")]
        return
    (service_monitor,) = of_kind(objs, "ServiceMonitor")
    selector = service_monitor["spec"]["selector"]["matchLabels"]
    (service,) = [s for s in of_kind(objs, "Service") if selects(selector, s["metadata"]["labels"])]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in service_monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
    (api,) = deployments(objs, "api")
    assert selects(service["spec"]["selector"], pod_labels(api))

    (pod_monitor,) = of_kind(objs, "PodMonitor")
    selector = pod_monitor["spec"]["selector"]["matchLabels"]
    selected = [w for w in workloads(objs) if selects(selector, pod_labels(w))]
    assert selected == deployments(objs, "worker"), "the PodMonitor scrapes every pool, only them"
    for w in selected:
        names = {p["name"] for c in containers(w) for p in c.get("ports", [])}
        for endpoint in pod_monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in names and endpoint["path"] == "/metrics"

    (rule,) = of_kind(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())

    (dashboard,) = [
        m
        for m in of_kind(objs, "ConfigMap")
        if "grafana_dashboard" in m["metadata"].get("labels", {})
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"] == {DASHBOARD.name: DASHBOARD.read_text()}


# ---- the hub download script --------------------------------------------------------------------


def hub_script() -> tuple[str, str]:
    """The fetch-model script and the path it reads repositories from (its hub mount)."""
    (worker,) = deployments(build("gke"), "worker")
    init = container(worker, HUB_INIT)
    assert init["command"] == ["sh", "-c"]
    (mount,) = [m["mountPath"] for m in init["volumeMounts"] if m["name"] == "hub"]
    script: str = init["args"][0]
    assert mount in script
    return script, mount


@pytest.fixture
def hub_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A stub `hf` that logs its arguments and writes a checkpoint into --local-dir."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "hf"
    stub.write_text(
        "#!/bin/sh\n"
        'echo "$@" >> "$HF_LOG"\n'
        "while [ $# -gt 0 ]; do\n"
        '  if [ "$1" = --local-dir ]; then mkdir -p "$2" && echo {} > "$2/model_index.json"; fi\n'
        "  shift\n"
        "done\n"
    )
    stub.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HF_LOG": str(tmp_path / "hf.log"),
        "SD3SERVE_MODEL": str(tmp_path / "models" / "stable-diffusion-3.5-large"),
        "SD3SERVE_MODEL_NAME": "stable-diffusion-3.5-large",
    }
    (tmp_path / "models").mkdir()
    return tmp_path, env


def run_hub_script(
    tmp_path: Path, env: dict[str, str], repos: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    script, mount = hub_script()
    hub = tmp_path / "hub"
    hub.mkdir(exist_ok=True)
    for name, repo in repos.items():
        (hub / name).write_text(repo)
    return subprocess.run(
        ["sh", "-c", script.replace(mount, str(hub))],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_hub_script_downloads_once(hub_env: tuple[Path, dict[str, str]]) -> None:
    tmp_path, env = hub_env
    repos = {"stable-diffusion-3.5-large": "stabilityai/stable-diffusion-3.5-large"}
    result = run_hub_script(tmp_path, env, repos)
    assert result.returncode == 0, result.stderr
    dest = Path(env["SD3SERVE_MODEL"])
    assert (dest / "model_index.json").is_file()
    assert not Path(f"{dest}.partial").exists()
    log = Path(env["HF_LOG"]).read_text().splitlines()
    assert len(log) == 1
    assert log[0].startswith(
        f"download stabilityai/stable-diffusion-3.5-large --local-dir {dest}.partial"
    )
    # A second start finds the checkpoint and downloads nothing.
    result = run_hub_script(tmp_path, env, repos)
    assert result.returncode == 0, result.stderr
    assert len(Path(env["HF_LOG"]).read_text().splitlines()) == 1


def test_hub_script_refuses_an_unknown_model(hub_env: tuple[Path, dict[str, str]]) -> None:
    tmp_path, env = hub_env
    result = run_hub_script(tmp_path, env, {"another-model": "org/another"})
    assert result.returncode == 1
    assert "names no repository for stable-diffusion-3.5-large" in result.stderr
    assert not Path(env["HF_LOG"]).exists()


def test_hub_cli_has_the_options_used() -> None:
    """The script's `hf download` options exist in the huggingface_hub CLI installed with the
    worker's dependencies (the worker image installs the same)."""
    script, _ = hub_script()
    result = run([tool("hf"), "download", "--help"])
    assert result.returncode == 0, result.stderr
    for option in set(re.findall(r"--[a-z-]+", script.split("hf download", 1)[1])):
        assert option in result.stdout, option
