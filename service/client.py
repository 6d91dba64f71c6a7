"""`sd3-serve generate`: the Python SDK (clients/python) and a progress bar fed by job events."""

from __future__ import annotations

import sys
from pathlib import Path

from sd3serve_client import Client, GenerateOptions, JobStatus, ProgressEvent, Sd3ServeError
from tqdm import tqdm


class ApiFailure(Exception):
    pass


def connect(url: str, api_key: str | None = None) -> Client:
    """A client of the API at `url` sending `api_key` (where the API has keys), refusing a URL
    that is not http(s)://HOST[:PORT]."""
    try:
        return Client(url, api_key=api_key)
    except ValueError:
        raise ApiFailure(f"--url must look like http://HOST:PORT; got {url!r}") from None


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


def generate(client: Client, prompt: str, options: GenerateOptions, out: Path) -> list[Path]:
    """Submit the job, follow its events, and write its images; ApiFailure says what failed."""
    try:
        return _generate(client, prompt, options, out)
    except Sd3ServeError as exc:  # the API's error (status, code, message) or why none came
        raise ApiFailure(str(exc)) from None


def _generate(client: Client, prompt: str, options: GenerateOptions, out: Path) -> list[Path]:
    job = client.generate(prompt, wait=False, **options)
    print(f"job {job.id} {job.status} (seed {job.params.seed})", file=sys.stderr)
    with tqdm(total=job.params.steps, unit="step", file=sys.stderr) as bar:
        for event in client.events(job):
            if isinstance(event, ProgressEvent):
                bar.update(event.step - bar.n)
            else:
                bar.set_postfix_str(str(event.status))
    job = client.get(job)
    if job.status != JobStatus.SUCCEEDED:
        raise ApiFailure(f"job {job.id} {job.status}: {job.error}")
    paths = output_paths(out, job.params.num_images)
    for index, path in enumerate(paths):
        path.write_bytes(client.download(job, index))
    return paths
