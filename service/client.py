"""`sd3-serve generate`: a small HTTP client of the API with a progress bar fed by SSE."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import connect_sse
from tqdm import tqdm


class ApiFailure(Exception):
    pass


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.is_error:
        try:
            error = response.json()["error"]
            raise ApiFailure(f"{response.status_code} {error['code']}: {error['message']}")
        except (ValueError, KeyError, TypeError):
            raise ApiFailure(f"{response.status_code}: {response.text[:200]}") from None
    body: dict[str, Any] = response.json()
    return body


def check_url(url: str) -> None:
    """Refuse a base URL that is not http(s)://host[:port], before any request."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiFailure(f"--url must look like http://HOST:PORT; got {url!r}")


def check_output(path: Path) -> None:
    """Refuse an output file that could not be written, by creating and removing it."""
    if path.is_dir():
        raise ApiFailure(f"cannot write {path}: it is a folder")
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as exc:
        raise ApiFailure(f"cannot write {path}: {exc.strerror}") from None
    if not existed:
        path.unlink()


def output_paths(out: Path, count: int) -> list[Path]:
    """`out.png` for one image; `out-0.png`, `out-1.png`, ... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]


def generate(base_url: str, body: dict[str, Any], out: Path, timeout_s: float = 600) -> list[Path]:
    """Submit the job, follow its events, and write its images; ApiFailure says what failed."""
    try:
        return _generate(base_url, body, out, timeout_s)
    except httpx.HTTPStatusError as exc:
        raise ApiFailure(f"{exc.response.status_code} from {exc.request.url}") from None
    except httpx.TransportError as exc:
        reason = str(exc) or type(exc).__name__
        raise ApiFailure(f"cannot reach the API at {base_url}: {reason}") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise ApiFailure(f"{base_url}: {exc}") from None


def _generate(base_url: str, body: dict[str, Any], out: Path, timeout_s: float) -> list[Path]:
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(30, read=timeout_s)) as client:
        job = _check(client.post("/v1/generate", json=body))
        print(f"job {job['id']} {job['status']} (seed {job['params']['seed']})", file=sys.stderr)
        with (
            tqdm(total=job["params"]["steps"], unit="step", file=sys.stderr) as bar,
            connect_sse(client, "GET", job["links"]["events"]) as events,
        ):
            events.response.raise_for_status()
            for event in events.iter_sse():
                if not event.data:  # keep-alive comment
                    continue
                data = event.json()
                if event.event == "progress":
                    bar.update(data["step"] - bar.n)
                elif event.event == "status":
                    bar.set_postfix_str(data["status"])
        job = _check(client.get(job["links"]["self"]))
        if job["status"] != "succeeded":
            raise ApiFailure(f"job {job['id']} {job['status']}: {job.get('error')}")
        paths = output_paths(out, len(job["links"]["images"]))
        for url, path in zip(job["links"]["images"], paths, strict=True):
            response = client.get(url)
            response.raise_for_status()
            path.write_bytes(response.content)
        return paths
