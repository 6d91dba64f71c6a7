"""The SDK's generated core is exactly what scripts/gen-client makes from the committed spec.

(That the spec is what the app serves is tests/test_openapi.py's.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
GENERATED = ROOT / "clients/python/sd3serve_client/_generated"


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_committed_core_is_what_the_generator_makes(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    result = subprocess.run(
        [ROOT / "scripts/gen-client", out],
        env=os.environ | {"PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fresh, committed = _tree(out), _tree(GENERATED)
    rerun = "run scripts/gen-client and commit its output"
    assert sorted(committed) == sorted(fresh), rerun
    assert [name for name in fresh if fresh[name] != committed[name]] == [], rerun
