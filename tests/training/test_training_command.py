"""`python -m training all` end to end, at toy size: every stage runs and the folder it writes
is a pipeline the worker's loader accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from common.contract import ServingDefaults


# The run's own limit (600 s below), not the suite's 300 s: on a busy machine, with the suite's
# other xdist worker beside it, the run can take over 300 s without hanging.
@pytest.mark.timeout(660)
def test_the_training_command_writes_a_loadable_pipeline(tmp_path: Path) -> None:
    out, work = tmp_path / "model", tmp_path / "work"
    argv = [
        sys.executable,
        "-m",
        "training",
        "all",
        "--out",
        str(out),
        "--work",
        str(work),
        "--scenes",
        "64",
        "--vae-steps",
        "2",
        "--vae-batch",
        "4",
        "--dit-steps",
        "2",
        "--dit-batch",
        "4",
        "--val-every",
        "1",
        "--colourless",
        "0.25",
        "--vae-object-margin",
        "1",
        "--flow-object-weight",
        "10",
        "--sample-every",
        "2",
        "--sample-limit",
        "2",
        "--threads",
        "1",
    ]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    # About 100 s on one core of an idle machine (240 s with the sampled evaluation's full 60
    # prompts × 28 steps, which --sample-limit cuts to 4); the limit is there to catch a hang,
    # not to time the run.
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

    log = json.loads((work / "log.json").read_text())
    assert log["vae"]["config"]["object_margin"] == 1
    assert log["transformer"]["config"]["object_weight"] == 10.0
    hints = json.loads((out / "training.json").read_text())
    assert hints["vae_object_margin"] == 1 and hints["flow_object_weight"] == 10.0
    assert log["latents"]["colourless_scenes"] == 16
    assert len(log["history"]["val_step"]) == 3  # before training and after each step
    # Sampled once, at step 2 (step 1 is no multiple of 2; step 0 is before training).
    (sampled,) = log["transformer"]["sampled_shape_accuracy"]
    assert sampled["step"] == 2
    assert set(sampled) == {"step", "seen", "held-out"}
    assert all(0.0 <= sampled[split] <= 1.0 for split in ("seen", "held-out"))
    for artefact in ("loss_vae.png", "loss_transformer.png", "samples_28_steps.png", "vae"):
        assert (work / artefact).exists(), artefact

    assert (out / ServingDefaults.FILE).is_file()
    defaults = ServingDefaults.load(out)
    assert defaults.max_sequence_length == 32
    assert defaults.default_steps == 28 and defaults.default_guidance_scale == 2.0
    pipe = StableDiffusion3Pipeline.from_pretrained(out, dtype=torch.float32)
    assert isinstance(pipe, StableDiffusion3Pipeline)
    assert pipe.vae.config.latent_channels == 16
    assert pipe.vae.config.scaling_factor != 1.0  # measured, not the placeholder
