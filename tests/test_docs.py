"""The README documents every setting and the OpenAPI spec documents every request field."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.contract import GenerateRequest
from common.settings import ENV_PREFIX, env_var
from service.app import create_app
from service.settings import ApiSettings
from worker.settings import WorkerSettings

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
SETTINGS = sorted(set(ApiSettings.model_fields) | set(WorkerSettings.model_fields))


@pytest.mark.parametrize("name", SETTINGS)
def test_readme_documents_every_setting(name: str) -> None:
    assert f"| `{env_var(name)}` |" in README


def test_env_example_lists_every_setting_with_its_default() -> None:
    """`.env.example` names each variable once, commented out, with the default it has."""
    entries = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line.startswith(f"# {ENV_PREFIX}"):
            name, _, value = line.removeprefix("# ").partition("=")
            entries[name] = value
    assert sorted(entries) == sorted(env_var(n) for n in SETTINGS)
    for cls in (ApiSettings, WorkerSettings):
        for name, field in cls.model_fields.items():
            if field.default_factory is None:
                default = "" if field.default is None else str(field.default)
                if isinstance(field.default, bool):
                    default = default.lower()
                assert entries[env_var(name)] == default, name


def test_openapi_documents_every_request_field_with_bounds() -> None:
    spec = create_app().openapi()
    schema = spec["components"]["schemas"]["GenerateRequest"]
    assert schema["additionalProperties"] is False
    for name in GenerateRequest.model_fields:
        field = schema["properties"][name]
        assert field.get("description"), name
    bounded = {
        "width": (8, 4096),
        "height": (8, 4096),
        "steps": (1, 100),
        "guidance_scale": (0, 20),
        "seed": (0, 2**32 - 1),
        "num_images": (1, 4),
    }
    for name, (low, high) in bounded.items():
        field = schema["properties"][name]
        variant = next(v for v in field.get("anyOf", [field]) if v.get("type") != "null")
        assert (variant["minimum"], variant["maximum"]) == (low, high), name
    assert schema["properties"]["prompt"]["maxLength"] == 2000
    assert "prefer" in {
        p["name"].lower() for p in spec["paths"]["/v1/generate"]["post"]["parameters"]
    }
