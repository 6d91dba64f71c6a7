"""The untrained pipeline: exactly the diffusers/transformers classes of a real SD3 checkpoint.

Sizes are tiny so that the whole model trains on two CPU cores; the dimension rules the SD3
pipeline relies on are checked in ``Dims.check``:

- CLIP prompt embeddings (both CLIPs' hidden states concatenated) are zero-padded to the
  T5 width, so T5 d_model = joint_attention_dim ≥ sum of the CLIP hidden sizes;
- the pooled embedding is both CLIPs' projections concatenated, so pooled_projection_dim =
  sum of the projection sizes;
- the transformer's caption projection feeds its attention, so caption_projection_dim =
  heads × head dim.

Text encoders are randomly initialised from the seed and stay frozen: the transformer learns
to read whatever features they produce, and they cost nothing to train.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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

from training import scenes, text

# T5 context length the model is trained for. Inference must use the same length, since T5
# (bidirectional, no attention mask in the pipeline) and the joint attention both see the
# padding; the pipeline's own default is 256, so the model folder's sd3_serve.json records
# this value and the worker passes it. Captions take at most ~20 T5 tokens, and the text
# tokens (77 CLIP + T5) dominate the transformer's cost: at 256 a step is ~3× slower than at 32.
MAX_SEQUENCE_LENGTH = 32
# Requests up to this size must run (quality aside), so the positional grid must cover it.
MAX_PIXELS = 256


@dataclass(frozen=True)
class Dims:
    clip_hidden: tuple[int, int] = (32, 64)
    clip_projection: tuple[int, int] = (32, 64)
    clip_layers: int = 2
    t5_d_model: int = 96
    t5_layers: int = 2
    t5_heads: int = 4
    layers: int = 6
    # 3 heads of 32, not 6 of 16: the same width costs ~15 % less per step at patch 1 (the
    # attention's per-score work scales with the heads), and at the fifth recipe's 2,800 steps
    # it drew held-out shape as well; the saving is part of what fits the hour
    # (docs/training.md, the sixth recipe).
    heads: int = 3
    head_dim: int = 32
    # Patch 1, not SD3's 2: a small object is 14 pixels, 3.5 latent pixels, so at patch 2 its
    # shape was decided inside one or two tokens and held-out pairs came out round
    # (docs/training.md, the fifth recipe).
    patch_size: int = 1
    vae_channels: tuple[int, ...] = (32, 64, 64)  # three levels: 64 → 16 pixels, factor 4
    vae_groups: int = 8
    latent_channels: int = 16
    # Largest latent side the positional embedding covers (in patches): 64 patches × 1 × 4
    # = 256 pixels, so the pipeline accepts images up to 256×256.
    pos_embed_max_size: int = 64

    @classmethod
    def sized(
        cls,
        patch_size: int,
        layers: int,
        heads: int,
        vae_channels: tuple[int, ...] | None = None,
        head_dim: int | None = None,
    ) -> Dims:
        """Default dims with another transformer shape or VAE depth; the positional grid
        still admits 256×256 images."""
        dims = cls(
            patch_size=patch_size,
            layers=layers,
            heads=heads,
            head_dim=head_dim or cls.head_dim,
            vae_channels=vae_channels or cls.vae_channels,
        )
        grid = -(-MAX_PIXELS // (patch_size * dims.vae_scale_factor))
        return replace(dims, pos_embed_max_size=grid)

    @property
    def vae_scale_factor(self) -> int:
        return int(2 ** (len(self.vae_channels) - 1))

    @property
    def latent_size(self) -> int:
        return scenes.IMAGE_SIZE // self.vae_scale_factor

    def check(self) -> None:
        if self.t5_d_model < sum(self.clip_hidden):
            raise ValueError("T5 d_model must be at least the sum of the CLIP hidden sizes")
        if self.t5_d_model % self.t5_heads:
            raise ValueError("T5 d_model must be divisible by its head count")
        max_pixels = self.pos_embed_max_size * self.patch_size * self.vae_scale_factor
        if max_pixels < MAX_PIXELS:
            raise ValueError(f"pos_embed_max_size admits only {max_pixels}-pixel images")


def make_tokenizers() -> tuple[CLIPTokenizer, CLIPTokenizer, T5TokenizerFast]:
    corpus = scenes.caption_corpus()
    return (
        text.build_clip_tokenizer(corpus),
        text.build_clip_tokenizer(corpus),
        text.build_t5_tokenizer(corpus),
    )


def make_clip(
    tokenizer: CLIPTokenizer, hidden: int, projection: int, layers: int, seed: int
) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        projection_dim=projection,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 16),
        max_position_embeddings=text.CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        # Not 2: the CLIP model then pools at the first EOS instead of the legacy argmax.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(config).eval().requires_grad_(False)


def make_t5(tokenizer: T5TokenizerFast, dims: Dims, seed: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=dims.t5_d_model,
        d_kv=dims.t5_d_model // dims.t5_heads,
        d_ff=2 * dims.t5_d_model,
        num_layers=dims.t5_layers,
        num_heads=dims.t5_heads,
        feed_forward_proj="gated-gelu",  # as T5 v1.1, the encoder SD3 uses
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        is_encoder_decoder=False,
        use_cache=False,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval().requires_grad_(False)


def make_vae(dims: Dims, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    n = len(dims.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=dims.vae_channels,
        layers_per_block=1,
        latent_channels=dims.latent_channels,
        norm_num_groups=dims.vae_groups,
        sample_size=scenes.IMAGE_SIZE,
        # Placeholders: train_vae measures both from the latents of the scene set.
        scaling_factor=1.0,
        shift_factor=0.0,
        # SD3's VAE has no 1×1 quant convs either.
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def make_transformer(dims: Dims, seed: int) -> SD3Transformer2DModel:
    torch.manual_seed(seed)
    inner = dims.heads * dims.head_dim
    model = SD3Transformer2DModel(
        sample_size=dims.latent_size,  # the pipeline's default height/width come from this
        patch_size=dims.patch_size,
        in_channels=dims.latent_channels,
        out_channels=dims.latent_channels,
        num_layers=dims.layers,
        attention_head_dim=dims.head_dim,
        num_attention_heads=dims.heads,
        joint_attention_dim=dims.t5_d_model,
        caption_projection_dim=inner,
        pooled_projection_dim=sum(dims.clip_projection),
        pos_embed_max_size=dims.pos_embed_max_size,
        qk_norm="rms_norm",
    )
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


def make_scheduler(shift: float) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def build_pipeline(
    seed: int, dims: Dims | None = None, shift: float = 1.0
) -> StableDiffusion3Pipeline:
    """All components, untrained; deterministic in ``seed`` (each gets its own sub-seed)."""
    dims = dims or Dims()
    dims.check()
    tok1, tok2, tok3 = make_tokenizers()
    return StableDiffusion3Pipeline(
        transformer=make_transformer(dims, seed + 1),
        scheduler=make_scheduler(shift),
        vae=make_vae(dims, seed + 2),
        text_encoder=make_clip(
            tok1, dims.clip_hidden[0], dims.clip_projection[0], dims.clip_layers, seed + 3
        ),
        tokenizer=tok1,
        text_encoder_2=make_clip(
            tok2, dims.clip_hidden[1], dims.clip_projection[1], dims.clip_layers, seed + 4
        ),
        tokenizer_2=tok2,
        text_encoder_3=make_t5(tok3, dims, seed + 5),
        tokenizer_3=tok3,
    )


@torch.no_grad()
def zero_pooled_(pipe: StableDiffusion3Pipeline) -> None:
    """An experiment, not the recipe: zero both CLIP projections, so the pooled vector (the
    adaLN input) is 0 for every prompt and the caption reaches the transformer only through
    the joint attention's tokens. Inference computes the same zeros from the saved weights."""
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        torch.nn.init.zeros_(encoder.text_projection.weight)


@torch.no_grad()
def encode_captions(
    pipe: StableDiffusion3Pipeline,
    captions: list[str],
    max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt embeddings (N, 77 + T5 length, d) and pooled embeddings (N, p), exactly as the
    pipeline computes them at inference (its own ``encode_prompt``)."""
    embeds, pooled = [], []
    for i in range(0, len(captions), batch_size):
        e, _, p, _ = pipe.encode_prompt(
            prompt=captions[i : i + batch_size],
            prompt_2=None,
            prompt_3=None,
            device=pipe.text_encoder.device,
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
        )
        embeds.append(e.cpu())
        pooled.append(p.cpu())
    return torch.cat(embeds), torch.cat(pooled)


def save_pipeline(pipe: StableDiffusion3Pipeline, directory: Path) -> None:
    pipe.save_pretrained(directory, safe_serialization=True)
    # save_pretrained writes only tokenizer.json; add CLIP's classic files for other loaders.
    text.save_clip_files(pipe.tokenizer, directory / "tokenizer")
    text.save_clip_files(pipe.tokenizer_2, directory / "tokenizer_2")
