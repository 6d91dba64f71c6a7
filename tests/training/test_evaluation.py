"""`python -m training evaluate` on the bundled model, and the VAE ceiling it reports."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from training import evaluate
from training.analyser import ATTRIBUTES
from worker.settings import BUNDLED_MODEL_DIR


def test_the_bundled_vae_draws_what_the_evaluation_asks_for() -> None:
    vae = AutoencoderKL.from_pretrained(BUNDLED_MODEL_DIR / "vae", torch_dtype=torch.float32)
    ceiling = evaluate.reconstruction_ceiling(vae)
    assert ceiling["seen"] == dict.fromkeys(ATTRIBUTES, 1.0)
    # The decoder still rounds some small purple triangles, a pair it never saw
    # (docs/training.md), but must leave the held-out shape target (85 %) within reach.
    # Every other attribute must survive the round trip.
    held_out = {a: v for a, v in ceiling["held-out"].items() if a != "shape"}
    assert held_out == dict.fromkeys(held_out, 1.0)
    assert ceiling["held-out"]["shape"] >= 0.85


def test_the_evaluate_command_prints_and_writes_its_report(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "training", "evaluate", str(BUNDLED_MODEL_DIR)]
    argv += ["--steps", "2", "--seeds", "0", "--limit", "2", "--threads", "1"]
    argv += ["--report", str(tmp_path)]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "VAE reconstructions of the evaluation scenes (the ceiling)" in done.stdout
    assert "validation velocity-MSE" in done.stdout

    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert set(report["summary"]) == {"2/seen", "2/held-out"}
    assert set(report["vae_ceiling"]) == set(evaluate.SPLITS)
    assert len(report["samples"]) == 4  # 2 prompts per split, one seed, one step count
    assert all(0.0 <= v <= 1.0 for row in report["vae_ceiling"].values() for v in row.values())
    assert (tmp_path / "eval_02_steps.png").is_file()
    assert report["validation_loss"] and all(
        math.isfinite(v) and v > 0 for v in report["validation_loss"].values()
    )
