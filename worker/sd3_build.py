"""Randomly initialised SD3 pipelines, built from a typed description of their dimensions.

`SD3Spec` says what an SD3 pipeline's components are (two CLIP text encoders, a T5 encoder,
the VAE, the MMDiT transformer, the flow-matching scheduler); the `build_*` functions turn it
into exactly the diffusers/transformers classes a real SD3 checkpoint loads as. The tiny test
model (`worker.tiny_model`) and the untrained model the training trains (`training.build`) are
two specs; a real checkpoint's architecture is another.

Dimensions that one component's output fixes in another are derived, not declared, so a spec
cannot contradict itself there:

- the transformer reads T5's states: joint_attention_dim = T5 d_model;
- the pooled embedding is both CLIPs' projections concatenated: pooled_projection_dim = sum
  of the projection sizes;
- the caption projection feeds the joint attention: caption_projection_dim = heads × head dim;
- the transformer denoises the VAE's latents: in and out channels = latent channels.

The one rule left between components is checked by `SD3Spec.check`: the pipeline zero-pads the
concatenated CLIP states up to T5's width, so T5 d_model ≥ sum of the CLIP hidden sizes.

Tokenizers are the caller's (each model brings its own vocabulary); the text encoders take
their vocabulary size and special token ids from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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

# SD3 pads CLIP prompts to 77 tokens; the CLIP position embeddings must cover them.
CLIP_MAX_LENGTH = 77
# Without T5 the pipeline stands zeros in for its states, as many tokens as it is told: SD3 was
# trained on 77-token T5 contexts, zeroed where T5 was dropped, so 77 is what the transformer
# knows; the pipeline's own default of 256 would more than double its text context for nothing.
NO_T5_MAX_SEQUENCE_LENGTH = CLIP_MAX_LENGTH
# Each component's seed is the pipeline's plus its offset, so a change to one component's
# spec leaves the others' initial weights as they were.
SEED_OFFSETS = {"transformer": 1, "vae": 2, "clip_l": 3, "clip_g": 4, "t5": 5}


@dataclass(frozen=True)
class ClipSpec:
    hidden: int
    projection: int
    # SD3 reads the penultimate hidden state, so at least 2.
    layers: int
    heads: int
    intermediate: int
    act: str  # CLIPTextConfig.hidden_act: "quick_gelu" (CLIP-L) or "gelu" (CLIP-G)


@dataclass(frozen=True)
class T5Spec:
    d_model: int
    d_ff: int
    d_kv: int
    layers: int
    heads: int
    feed_forward_proj: str  # "gated-gelu" is T5 v1.1, the encoder SD3 uses
    dropout_rate: float
    # Declare the config an encoder alone (is_encoder_decoder and use_cache False), as
    # T5EncoderModel itself does from transformers 5; False keeps T5Config's defaults, which
    # older transformers versions then save.
    encoder_only_config: bool


@dataclass(frozen=True)
class VaeSpec:
    channels: tuple[int, ...]  # one block per entry; each after the first halves the side
    groups: int
    latent_channels: int
    layers_per_block: int
    sample_size: int  # the side VAE tiling starts at; no effect on the weights
    # How the pipeline normalises latents: (latent - shift) × scaling.
    scaling_factor: float
    shift_factor: float

    @property
    def scale_factor(self) -> int:
        """Image pixels per latent pixel along a side."""
        return int(2 ** (len(self.channels) - 1))


@dataclass(frozen=True)
class TransformerSpec:
    sample_size: int  # latent side; the pipeline's default height and width come from it
    patch_size: int
    layers: int
    heads: int
    head_dim: int
    # Largest latent side the positional embedding covers, in patches.
    pos_embed_max_size: int
    qk_norm: str | None
    # Initialisation, not architecture: DiT's adaLN-Zero (see `adaln_zero_`) rather than
    # diffusers' PyTorch defaults.
    adaln_zero: bool


@dataclass(frozen=True)
class SD3Spec:
    clip_l: ClipSpec  # text_encoder
    clip_g: ClipSpec  # text_encoder_2
    t5: T5Spec  # text_encoder_3
    vae: VaeSpec
    transformer: TransformerSpec
    scheduler_shift: float

    @property
    def max_image_side(self) -> int:
        """Largest image side, in pixels, the positional embedding admits."""
        t = self.transformer
        return t.pos_embed_max_size * t.patch_size * self.vae.scale_factor

    def check(self) -> None:
        if self.t5.d_model < self.clip_l.hidden + self.clip_g.hidden:
            raise ValueError("T5 d_model must be at least the sum of the CLIP hidden sizes")


class Tokenizers(NamedTuple):
    clip_l: CLIPTokenizer
    clip_g: CLIPTokenizer
    t5: T5TokenizerFast


def _reseed(seed: int | None) -> None:
    # None: draw from torch's global generator where it stands (see build_pipeline's stream).
    if seed is not None:
        torch.manual_seed(seed)


def build_clip(
    spec: ClipSpec, tokenizer: CLIPTokenizer, seed: int | None
) -> CLIPTextModelWithProjection:
    """A frozen CLIP text encoder (eval mode, no gradients): SD3 never trains it here."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        projection_dim=spec.projection,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act=spec.act,
        # The tokenizer's, not CLIPTextConfig's default eos of 2: with the real id the model
        # pools at the first EOS instead of the legacy argmax over token ids.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    _reseed(seed)
    return CLIPTextModelWithProjection(config).eval().requires_grad_(False)


def build_t5(spec: T5Spec, tokenizer: T5TokenizerFast, seed: int | None) -> T5EncoderModel:
    """A frozen T5 encoder (eval mode, no gradients)."""
    encoder_only = {"is_encoder_decoder": False, "use_cache": False}
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=spec.d_model,
        d_kv=spec.d_kv,
        d_ff=spec.d_ff,
        num_layers=spec.layers,
        num_heads=spec.heads,
        feed_forward_proj=spec.feed_forward_proj,
        dropout_rate=spec.dropout_rate,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        **(encoder_only if spec.encoder_only_config else {}),
    )
    _reseed(seed)
    return T5EncoderModel(config).eval().requires_grad_(False)


def build_vae(spec: VaeSpec, seed: int | None) -> AutoencoderKL:
    """The VAE as constructed (training mode): the caller decides whether it trains it."""
    _reseed(seed)
    n = len(spec.channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=spec.channels,
        layers_per_block=spec.layers_per_block,
        latent_channels=spec.latent_channels,
        norm_num_groups=spec.groups,
        sample_size=spec.sample_size,
        scaling_factor=spec.scaling_factor,
        shift_factor=spec.shift_factor,
        # SD3's VAE has no 1×1 quant convs.
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def build_transformer(spec: SD3Spec, seed: int | None) -> SD3Transformer2DModel:
    """The MMDiT as constructed (training mode); it reads the other components' widths."""
    t = spec.transformer
    _reseed(seed)
    model = SD3Transformer2DModel(
        sample_size=t.sample_size,
        patch_size=t.patch_size,
        in_channels=spec.vae.latent_channels,
        out_channels=spec.vae.latent_channels,
        num_layers=t.layers,
        attention_head_dim=t.head_dim,
        num_attention_heads=t.heads,
        joint_attention_dim=spec.t5.d_model,
        caption_projection_dim=t.heads * t.head_dim,
        pooled_projection_dim=spec.clip_l.projection + spec.clip_g.projection,
        pos_embed_max_size=t.pos_embed_max_size,
        qk_norm=t.qk_norm,
    )
    if t.adaln_zero:
        adaln_zero_(model)
    return model


def adaln_zero_(model: SD3Transformer2DModel) -> None:
    """DiT's adaLN-Zero init: every block starts as the identity and the output as zero.

    diffusers initialises these layers with PyTorch defaults; zero gates make early training
    of a deep stack stable (Peebles & Xie, 2023).
    """
    for name, module in model.named_modules():
        is_modulation = name.endswith(("norm1.linear", "norm1_context.linear", "norm_out.linear"))
        if isinstance(module, torch.nn.Linear) and (is_modulation or name == "proj_out"):
            torch.nn.init.zeros_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def build_scheduler(shift: float) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def build_pipeline(
    spec: SD3Spec, tokenizers: Tokenizers, seed: int, *, stream: bool = False
) -> StableDiffusion3Pipeline:
    """Every component, untrained; deterministic in ``seed``.

    Each component reseeds torch's global generator with ``seed`` plus its `SEED_OFFSETS`
    entry. ``stream=True`` instead seeds once and draws the components in turn from that one
    stream (CLIP-L, CLIP-G, T5, VAE, transformer): the tiny test model's scheme, kept so that
    its weights stay what they were.
    """
    spec.check()
    if stream:
        torch.manual_seed(seed)

    def seed_of(component: str) -> int | None:
        return None if stream else seed + SEED_OFFSETS[component]

    # The order matters only to the stream.
    clip_l = build_clip(spec.clip_l, tokenizers.clip_l, seed_of("clip_l"))
    clip_g = build_clip(spec.clip_g, tokenizers.clip_g, seed_of("clip_g"))
    t5 = build_t5(spec.t5, tokenizers.t5, seed_of("t5"))
    vae = build_vae(spec.vae, seed_of("vae"))
    transformer = build_transformer(spec, seed_of("transformer"))
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=build_scheduler(spec.scheduler_shift),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=tokenizers.clip_l,
        text_encoder_2=clip_g,
        tokenizer_2=tokenizers.clip_g,
        text_encoder_3=t5,
        tokenizer_3=tokenizers.t5,
    )
