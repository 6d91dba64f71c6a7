"""The processes as users start them: settings refused at start, a slim API, the CLI, dev mode."""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from PIL import Image

from common.settings import ENV_PREFIX, env_var, mask_url
from service.dev import Stack, free_port, publish_idle_model
from tests.harness import (
    TINY_MODEL,
    Deployment,
    poll,
    settings_env,
    start_api,
    start_redis,
)
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
    ("command", "field", "value"),
    [
        ("api", "max_queued_jobs", "0"),
        ("api", "redis_url", "http://nope"),
        ("api", "result_ttl_s", "soon"),
        ("api", "result_store", "ftp://host/images"),
        ("api", "result_urls", "presigned"),  # needs an s3:// store
        ("worker", "torch_device", "gpu"),
        ("worker", "torch_dtype", "int8"),
        ("worker", "metrics_resolutions", "1024,512x512"),
        ("worker", "metrics_steps", "28,many"),
        ("worker", "model_name", "no spaces please"),
    ],
)
def test_bad_settings_are_refused_at_start_naming_the_variable(
    command: str, field: str, value: str
) -> None:
    result = run([command], env=dict(os.environ) | settings_env(**{field: value}))
    assert result.returncode == 2
    assert "invalid setting" in result.stderr
    assert env_var(field) in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["api", "worker"])
def test_a_refused_secret_is_never_printed(command: str) -> None:
    env = dict(os.environ) | settings_env(redis_url="http://admin:hunter2@redis.internal:6379")
    result = run([command], env=env)
    assert result.returncode == 2
    assert env_var("redis_url") in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_mask_url_hides_passwords() -> None:
    assert mask_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("rediss://user:s3cret@h/1") == "rediss://user:***@h/1"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"


def test_settings_are_read_from_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(f"{env_var('max_queued_jobs')}=0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["PYTHONPATH"] = str(Path(__file__).parent.parent)
    result = subprocess.run(
        [sys.executable, "-m", "service", "api"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert env_var("max_queued_jobs") in result.stderr


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
            "--model",
            TINY_MODEL,
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
    line = _one_line_failure(result)
    assert line.startswith("sd3-serve generate: 422 invalid_parameter") and "steps" in line
    assert not (tmp_path / "o.png").exists()


@pytest.mark.stack
def test_full_queue_answers_429(tmp_path: Path) -> None:
    stack = Stack()
    try:
        redis_url = start_redis(stack, tmp_path)
        # Models known from workers that have since scaled to zero: their jobs queue and stay.
        idle, other = (publish_idle_model(redis_url, name) for name in ("idle", "other"))
        env = dict(os.environ) | settings_env(
            redis_url=redis_url, max_queued_jobs=2, result_store=f"file://{tmp_path}"
        )
        api = start_api(stack, env)
        with closing(api.client):
            jobs = [submit(api, model=idle, prompt="waits", steps=1) for _ in range(2)]
            assert [r.status_code for r in jobs] == [202, 202]
            full = submit(api, model=idle, prompt="one too many", steps=1)
            assert full.status_code == 429
            assert full.json()["error"]["code"] == "queue_full"
            assert full.headers["retry-after"] == "10"
            # The bound is per model: another model's queue still takes jobs.
            assert submit(api, model=other, prompt="elsewhere", steps=1).status_code == 202
            assert api.client.delete(f"/v1/jobs/{jobs[0].json()['id']}").status_code == 200
            assert submit(api, model=idle, prompt="room again", steps=1).status_code == 202
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
    env = {k: v for k, v in os.environ.items() if k != env_var("redis_url")} | settings_env(
        model=model_dir, result_store=f"file://{tmp_path / 'results'}"
    )
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


@pytest.mark.stack
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_several_api_processes_report_metrics_that_add_up(tmp_path: Path) -> None:
    stack = Stack()
    try:
        env = dict(os.environ) | settings_env(
            redis_url=start_redis(stack, tmp_path),
            api_workers=2,
            result_store=f"file://{tmp_path}",
        )
        api = start_api(stack, env)
        with closing(api.client):
            _, parent = stack.children[-1]
            # uvicorn's supervisor runs the API processes as its children (beside, maybe,
            # multiprocessing's resource tracker).
            poll(lambda: len(_children(parent.pid)) >= 2, "two API processes")
            requests = 40
            for _ in range(requests):
                # A new connection each time, so the kernel spreads them over both processes.
                assert httpx.get(f"{api.url}/v1/models").status_code == 200
            listed = 'sd3serve_http_requests_total{route="/v1/models",status="200"}'
            counts = []
            for _ in range(6):
                page = httpx.get(f"{api.url}/metrics").text
                [line] = [line for line in page.splitlines() if line.startswith(listed)]
                counts.append(float(line.split()[-1]))
            # Whichever process answers a scrape, it reports both processes' requests.
            assert counts == [requests] * 6
    finally:
        stack.stop()


def _one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_generate_cli_says_in_one_line_when_nothing_listens(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = _one_line_failure(run(["generate", "x", "-o", str(tmp_path / "o.png"), "--url", url]))
    assert line.startswith("sd3-serve generate: cannot reach the API at " + url)


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1", "http://", "http://h:port"])
def test_generate_cli_refuses_a_bad_url_in_one_line(url: str, tmp_path: Path) -> None:
    line = _one_line_failure(run(["generate", "x", "-o", str(tmp_path / "o.png"), "--url", url]))
    assert url in line


@pytest.mark.parametrize("where", ["missing/o.png", "a-file/o.png", "."])
def test_generate_cli_checks_the_output_before_submitting(where: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    # Nothing listens at this URL: a refusal naming the output shows it came first.
    url = f"http://127.0.0.1:{free_port()}"
    output = tmp_path / where
    line = _one_line_failure(run(["generate", "x", "-o", str(output), "--url", url]))
    assert line.startswith(f"sd3-serve generate: cannot write {output}")


def test_every_cli_option_has_help() -> None:
    from service.cli import parser

    subparsers = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"sd3-serve {name} {action.dest}"
