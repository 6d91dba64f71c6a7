"""The README documents every setting and the OpenAPI spec documents every request field."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.contract import GenerateRequest
from service.app import create_app
from service.settings import ApiSettings
from worker.settings import WorkerSettings

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize(
    "name", sorted(set(ApiSettings.model_fields) | set(WorkerSettings.model_fields))
)
def test_readme_documents_every_setting(name: str) -> None:
    assert f"| `{name.upper()}` |" in README


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
