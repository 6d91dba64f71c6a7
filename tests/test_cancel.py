"""Canceling: a queued job at once, a running one at its next step, a finished one not at all."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import Api
from tests.helpers import events, first_progress, submit, wait_final

pytestmark = pytest.mark.stack

# Long enough on the tiny model that it is still denoising when the cancel lands.
SLOW: dict[str, Any] = {"prompt": "a long job", "width": 384, "height": 384, "steps": 100}


def test_cancel_running_job_stops_before_decoding(api: Api) -> None:
    job = submit(api, **SLOW).json()
    first_progress(api, job["id"])
    response = api.client.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 202
    assert response.json()["cancel_requested"] is True
    done = wait_final(api, job["id"])
    assert done["status"] == "canceled"
    assert "canceled" in done["error"]
    assert done["progress"]["step"] < 100
    assert done["links"]["images"] == []
    assert done["timings"]["encode"] is None  # no VAE decode, no encode
    reply = api.client.get(f"/v1/jobs/{job['id']}/images/0")
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "image_not_found"
    statuses = [d["status"] for kind, d in events(api, job["id"]) if kind == "status"]
    assert statuses == ["queued", "running", "canceled"]


def test_cancel_queued_job_at_once(api: Api) -> None:
    blocker = submit(api, **SLOW).json()
    first_progress(api, blocker["id"])  # the only worker is now busy
    queued = submit(api, prompt="waits its turn", steps=2).json()
    view = api.client.get(f"/v1/jobs/{queued['id']}").json()
    assert view["status"] == "queued" and view["queue_position"] == 0

    response = api.client.delete(f"/v1/jobs/{queued['id']}")
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    assert api.client.delete(f"/v1/jobs/{blocker['id']}").status_code == 202
    assert wait_final(api, blocker["id"])["status"] == "canceled"

    # The canceled job never ran: its history is queued -> canceled, nothing else.
    stream = events(api, queued["id"])
    assert stream == [
        ("status", {"status": "queued"}),
        ("status", {"status": "canceled", "error": stream[-1][1]["error"]}),
    ]
    later = submit(api, prefer="wait=60", prompt="after the cancel", steps=2).json()
    assert later["status"] == "succeeded"
    assert api.client.get(f"/v1/jobs/{queued['id']}").json()["status"] == "canceled"


def test_cancel_finished_job_is_409(api: Api) -> None:
    job = submit(api, prefer="wait=60", prompt="done already", steps=1).json()
    response = api.client.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_finished"
