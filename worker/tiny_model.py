"""Build a tiny, randomly initialised SD3-architecture pipeline for tests and benchmarks.

It is built in seconds from fixed seeds with the very classes a real SD3 checkpoint uses,
written with `save_pretrained` and loaded back through `StableDiffusion3Pipeline.from_pretrained`
like any real checkpoint, and it admits sizes up to 512×512. Its weights are random: it
exercises the whole serving path, not image quality. The default model is the trained one in
`worker/models/sd3-scenes`.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from common.contract import SERVING_DEFAULTS_FILE

SEED = 20240612
CLIP_HIDDEN = 32
CLIP_PROJECTION = 32
T5_DIM = 2 * CLIP_HIDDEN  # SD3 pads the concatenated CLIP states up to T5's width.
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 256

# Defaults the worker advertises for this model: few steps, since its output is noise anyway.
SERVING_DEFAULTS = {"default_steps": 8, "default_guidance_scale": 4.5}


def _clip_tokenizer() -> CLIPTokenizer:
    # A byte-level vocabulary with no merges: every prompt tokenizes, one token per character.
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def _t5_tokenizer() -> T5TokenizerFast:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    alphabet = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    pieces += [(c, -3.0) for c in alphabet] + [("▁" + c, -2.5) for c in alphabet]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


def _clip_encoder(vocab_size: int) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=CLIP_HIDDEN,
        intermediate_size=64,
        projection_dim=CLIP_PROJECTION,
        num_hidden_layers=2,  # SD3 reads the penultimate hidden state.
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu",
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModelWithProjection(config).eval()


def build_pipeline() -> StableDiffusion3Pipeline:
    """Create the tiny pipeline deterministically; the same seed gives the same weights."""
    torch.manual_seed(SEED)
    clip_tok = _clip_tokenizer()
    t5_tok = _t5_tokenizer()
    text_encoder = _clip_encoder(len(clip_tok))
    text_encoder_2 = _clip_encoder(len(clip_tok))
    text_encoder_3 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=T5_DIM,
            d_ff=128,
            d_kv=16,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
        )
    ).eval()
    # Three VAE blocks give a scale factor of 4; with patch size 2 sizes step by 8 pixels.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5305,
    ).eval()
    transformer = SD3Transformer2DModel(
        sample_size=16,  # latent side: a 64x64 default image
        patch_size=2,
        in_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_DIM,
        caption_projection_dim=32,
        pooled_projection_dim=2 * CLIP_PROJECTION,
        out_channels=16,
        pos_embed_max_size=64,  # admits up to 512x512
        qk_norm="rms_norm",
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=clip_tok,
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tok,
    )


def build(out_dir: Path) -> Path:
    """Write the tiny pipeline to `out_dir` (a diffusers folder) and return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    build_pipeline().save_pretrained(out_dir)
    (out_dir / SERVING_DEFAULTS_FILE).write_text(json.dumps(SERVING_DEFAULTS, indent=2) + "\n")
    return out_dir
