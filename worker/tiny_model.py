"""Build a tiny, randomly initialised SD3-architecture pipeline for tests and benchmarks.

It is built in seconds from fixed seeds with the very classes a real SD3 checkpoint uses,
written with `save_pretrained` and loaded back through `StableDiffusion3Pipeline.from_pretrained`
like any real checkpoint, and it admits sizes up to 512×512. Its weights are random: it
exercises the whole serving path, not image quality. The default model is the trained one in
`worker/models/sd3-scenes`.
"""

from __future__ import annotations

import string
from pathlib import Path

from diffusers import StableDiffusion3Pipeline
from transformers import CLIPTokenizer, T5TokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from common.contract import ServingDefaults
from worker import sd3_build
from worker.sd3_build import ClipSpec, SD3Spec, T5Spec, TransformerSpec, VaeSpec

SEED = 20240612
T5_MAX_LENGTH = 256

_CLIP = ClipSpec(hidden=32, projection=32, layers=2, heads=4, intermediate=64, act="gelu")
SPEC = SD3Spec(
    clip_l=_CLIP,
    clip_g=_CLIP,
    t5=T5Spec(
        d_model=2 * _CLIP.hidden,  # just wide enough for both CLIPs' states side by side
        d_ff=128,
        d_kv=16,
        layers=2,
        heads=4,
        # T5Config's defaults, which this model has always had.
        feed_forward_proj="relu",
        dropout_rate=0.1,
        encoder_only_config=False,
    ),
    # Three VAE blocks give a scale factor of 4; with patch size 2 sizes step by 8 pixels.
    vae=VaeSpec(
        channels=(16, 32, 32),
        groups=8,
        latent_channels=16,
        layers_per_block=1,
        sample_size=32,
        # SD3's own latent normalisation (its VAE's constants).
        scaling_factor=1.5305,
        shift_factor=0.0609,
    ),
    transformer=TransformerSpec(
        sample_size=16,  # latent side: a 64x64 default image
        patch_size=2,
        layers=2,
        heads=2,
        head_dim=16,
        pos_embed_max_size=64,  # admits up to 512x512
        qk_norm="rms_norm",
        adaln_zero=False,
    ),
    scheduler_shift=3.0,
)

# Defaults the worker advertises for this model: few steps, since its output is noise anyway.
SERVING_DEFAULTS = ServingDefaults(default_steps=8, default_guidance_scale=4.5)


def clip_tokenizer() -> CLIPTokenizer:
    # A byte-level vocabulary with no merges: every prompt tokenizes, one token per character.
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=sd3_build.CLIP_MAX_LENGTH)


def t5_tokenizer() -> T5TokenizerFast:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    alphabet = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces += [(c, -3.0) for c in alphabet] + [("▁" + c, -2.5) for c in alphabet]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def build_pipeline() -> StableDiffusion3Pipeline:
    """Create the tiny pipeline deterministically; the same seed gives the same weights."""
    clip = clip_tokenizer()
    tokenizers = sd3_build.Tokenizers(clip_l=clip, clip_g=clip, t5=t5_tokenizer())
    pipe = sd3_build.build_pipeline(SPEC, tokenizers, SEED, stream=True)
    # Nothing here trains: inference mode throughout, as from_pretrained loads it.
    pipe.vae.eval()
    pipe.transformer.eval()
    return pipe


def build(out_dir: Path) -> Path:
    """Write the tiny pipeline to `out_dir` (a diffusers folder) and return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    build_pipeline().save_pretrained(out_dir)
    SERVING_DEFAULTS.save(out_dir)
    return out_dir
