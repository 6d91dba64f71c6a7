"""The public SD3 checkpoints' architectures: each component's config, committed as JSON here.

`shared/` holds what the three checkpoints have in common: the VAE (`vae`), CLIP-L
(`text_encoder`), OpenCLIP bigG (`text_encoder_2`), the T5-XXL encoder (`text_encoder_3`),
the scheduler and `model_index.json`. Each architecture's folder holds what is its own: the
transformer's config and `sd3_serve.json`, the steps and guidance its model card recommends.

Sources: the diffusers-format configs Stability AI publishes on the Hugging Face hub with
stabilityai/stable-diffusion-3-medium-diffusers, stabilityai/stable-diffusion-3.5-medium and
stabilityai/stable-diffusion-3.5-large, written out by hand (nothing here is downloaded). Left
out: version stamps, dtypes, and training or generation settings that transformers 5 no longer
knows (CLIP's `dropout`, T5's `decoder_start_token_id`). Cross-checked against diffusers'
single-file loader (`diffusers.loaders.single_file_utils`), which tells the three apart by the
same shapes: a 192² positional grid for SD3 Medium, 384² for SD3.5 Medium, 38 blocks for SD3.5
Large, and a 6 × 1536 modulation for both Mediums; and against the published parameter counts
(tests/test_real_arch.py).

Torch-free, so the CLI can offer the names; `worker.real_model` builds the components.
"""

from __future__ import annotations

from pathlib import Path

ARCHS = ("sd3-medium", "sd3.5-medium", "sd3.5-large")
CONFIGS = Path(__file__).parent
SHARED = "shared"
# Every weight-bearing component of an SD3 pipeline, by its diffusers folder name.
MODELS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")


def config_dir(arch: str, component: str) -> Path:
    """The folder holding `component`'s config for `arch`: its own, else the shared one."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")
    own = CONFIGS / arch / component
    return own if own.is_dir() else CONFIGS / SHARED / component
