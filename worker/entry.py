"""The worker's entry point: settings first, then torch.

Settings are checked before torch and diffusers are imported, so a bad one is refused at once,
not after the seconds those imports take.
"""

from __future__ import annotations

import logging
import sys

from common.settings import SettingsError, load_settings
from worker.settings import WorkerSettings


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load_settings(WorkerSettings)
    except SettingsError as exc:
        print(f"sd3-serve worker: {exc}", file=sys.stderr)
        return 2
    from worker.main import run

    try:
        run(settings)
    except SettingsError as exc:  # what only the loaded model can show (warm sizes, devices)
        print(f"sd3-serve worker: {exc}", file=sys.stderr)
        return 2
    return 0
