#!/usr/bin/env python3
"""Write the API's OpenAPI document to clients/openapi.json (or, with --check, compare).

    .venv/bin/python scripts/export_openapi.py [--check]

Run it after changing a route or a schema; tests/test_openapi.py fails while the file and the
app disagree. The document is the app's own `/openapi.json`, from the default settings.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "clients" / "openapi.json"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs, writing nothing"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from service.app import create_app
    from service.openapi import render
    from service.settings import ApiSettings

    # Default settings, not this machine's environment or .env: the document is the same.
    text = render(create_app(ApiSettings.model_construct()).openapi())
    if args.check:
        if SPEC.is_file() and SPEC.read_text(encoding="utf-8") == text:
            return 0
        print(f"{SPEC.relative_to(ROOT)} is out of date; run scripts/export_openapi.py")
        return 1
    SPEC.parent.mkdir(exist_ok=True)
    SPEC.write_text(text, encoding="utf-8")
    print(f"wrote {SPEC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    # Run by a python without the project (`scripts/export_openapi.py`): use the virtualenv's.
    if importlib.util.find_spec("fastapi") is None and VENV_PYTHON.is_file():
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), __file__, *sys.argv[1:]])
    sys.exit(main())
