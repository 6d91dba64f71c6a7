"""Where finished images live. Workers write them; the API reads them back.

The interface is deliberately small (put, get, purge) so that an object-store backend can be
added beside the local directory without touching either side.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.contract import OutputFormat

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    content_type: str


class ResultStore(Protocol):
    def put(self, job_id: str, index: int, data: bytes, fmt: OutputFormat) -> None: ...

    def get(self, job_id: str, index: int) -> StoredImage | None: ...

    def purge_older_than(self, age_s: float) -> int: ...


class LocalResultStore:
    """One folder per job under `root`, one file per image, named `<index>.<format>`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _job_dir(self, job_id: str) -> Path:
        # Job ids reach here from URLs; refuse anything that could leave the root.
        if not _JOB_ID.match(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def put(self, job_id: str, index: int, data: bytes, fmt: OutputFormat) -> None:
        job_dir = self._job_dir(job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half an image.
        fd, tmp = tempfile.mkstemp(dir=job_dir, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, job_dir / f"{index}.{fmt.value}")

    def get(self, job_id: str, index: int) -> StoredImage | None:
        if not _JOB_ID.match(job_id):
            return None
        for fmt in OutputFormat:
            path = self.root / job_id / f"{index}.{fmt.value}"
            if path.is_file():
                return StoredImage(path.read_bytes(), fmt.content_type)
        return None

    def purge_older_than(self, age_s: float) -> int:
        """Delete job folders last written more than `age_s` ago; return how many."""
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - age_s
        purged = 0
        for job_dir in self.root.iterdir():
            if (
                job_dir.is_dir()
                and _JOB_ID.match(job_dir.name)
                and job_dir.stat().st_mtime < cutoff
            ):
                shutil.rmtree(job_dir, ignore_errors=True)
                purged += 1
        return purged
