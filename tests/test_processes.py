"""The processes as users start them: settings refused at start, a slim API, the CLI, dev mode."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from PIL import Image

from service.dev import Stack, free_port
from tests.harness import Deployment, poll, start_api
from tests.helpers import submit


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_api_imports_neither_torch_nor_diffusers() -> None:
    code = (
        "import sys, service.app, service.cli, service.dev, service.client\n"
        "service.app.create_app()\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "heavy = sorted(loaded & {'torch', 'diffusers', 'transformers'})\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("command", "variable", "value"),
    [
        ("api", "MAX_QUEUED_JOBS", "0"),
        ("api", "REDIS_URL", "http://nope"),
        ("api", "RESULT_TTL_S", "soon"),
        ("worker", "TORCH_DEVICE", "gpu"),
        ("worker", "TORCH_DTYPE", "int8"),
        ("worker", "METRICS_RESOLUTIONS", "1024,512x512"),
    ],
)
def test_bad_settings_are_refused_at_start(command: str, variable: str, value: str) -> None:
    result = run([command], env=dict(os.environ) | {variable: value})
    assert result.returncode == 2
    assert "invalid setting" in result.stderr
    assert variable.lower() in result.stderr


@pytest.mark.stack
def test_generate_cli_writes_decodable_images(live: Deployment, tmp_path: Path) -> None:
    out = tmp_path / "pic.png"
    result = run(
        [
            "generate",
            "a red circle",
            "-o",
            str(out),
            "--url",
            live.api.url,
            "--steps",
            "4",
            "--width",
            "128",
            "--height",
            "64",
            "-n",
            "2",
            "--seed",
            "5",
        ]
    )
    assert result.returncode == 0, result.stderr
    paths = [tmp_path / "pic-0.png", tmp_path / "pic-1.png"]
    assert result.stdout.split() == [str(p) for p in paths]
    for path in paths:
        image = Image.open(io.BytesIO(path.read_bytes()))
        assert image.format == "PNG" and image.size == (128, 64)
    assert "4/4" in result.stderr  # the progress bar reached the last step

    jpeg = tmp_path / "pic.jpg"
    assert (
        run(["generate", "x", "-o", str(jpeg), "--url", live.api.url, "--steps", "1"]).returncode
        == 0
    )
    with Image.open(jpeg) as image:
        assert image.format == "JPEG"


@pytest.mark.stack
def test_generate_cli_reports_bad_input(live: Deployment, tmp_path: Path) -> None:
    result = run(
        ["generate", "x", "-o", str(tmp_path / "o.png"), "--url", live.api.url, "--steps", "500"]
    )
    assert result.returncode == 2
    assert "422 invalid_parameter" in result.stderr and "steps" in result.stderr
    assert not (tmp_path / "o.png").exists()


@pytest.mark.stack
def test_full_queue_answers_429(live: Deployment, tmp_path: Path) -> None:
    stack = Stack()
    try:
        # A second API on the same Redis, feeding a queue no worker listens to.
        env = dict(os.environ) | {
            "REDIS_URL": live.redis_url,
            "QUEUE_NAME": "unserved",
            "MAX_QUEUED_JOBS": "2",
            "RESULTS_DIR": str(tmp_path),
        }
        api = start_api(stack, env)
        with closing(api.client):
            jobs = [submit(api, prompt="waits", steps=1) for _ in range(2)]
            assert [r.status_code for r in jobs] == [202, 202]
            full = submit(api, prompt="one too many", steps=1)
            assert full.status_code == 429
            assert full.json()["error"]["code"] == "queue_full"
            assert full.headers["retry-after"] == "10"
            assert api.client.delete(f"/v1/jobs/{jobs[0].json()['id']}").status_code == 200
            assert submit(api, prompt="room again", steps=1).status_code == 202
    finally:
        stack.stop()


def _children(pid: int) -> set[int]:
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line
            )
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.add(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.stack
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_dev_runs_the_whole_stack_and_stops_cleanly(model_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {
        "MODEL": str(model_dir),
        "RESULTS_DIR": str(tmp_path / "results"),
    }
    port = free_port()
    dev = subprocess.Popen(
        [sys.executable, "-m", "service", "dev", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        # As `sd3-serve dev &` in a script starts it: with SIGINT ignored. It must still stop.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert dev.stdout is not None
        lines = []
        for line in dev.stdout:
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        text = "".join(lines)
        assert f"API:     http://127.0.0.1:{port}" in text
        assert "worker 0 metrics: http://127.0.0.1:" in text
        children = _children(dev.pid)
        assert len(children) == 3  # redis-server, the worker, the API

        import httpx

        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/generate",
            json={"prompt": "x", "steps": 2},
            headers={"Prefer": "wait=60"},
            timeout=90,
        )
        assert reply.status_code == 200 and reply.json()["status"] == "succeeded"

        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=60) == 0
        poll(lambda: not any(_alive(pid) for pid in children), "every child to exit", 30)
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        if dev.stdout is not None:
            dev.stdout.close()
