"""The untrained pipeline: exactly the diffusers/transformers classes of a real SD3 checkpoint.

Sizes are tiny so that the whole model trains on two CPU cores. ``Dims`` holds what the
training varies and turns it into the shared ``worker.sd3_build.SD3Spec`` (which derives the
widths one component fixes in another and checks the rest); the choices the training never
varies (activations, T5's gating, adaLN-Zero init, placeholder latent statistics) are made
there too.

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
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5EncoderModel,
    T5TokenizerFast,
)

from training import scenes, text
from worker import sd3_build
from worker.sd3_build import ClipSpec, SD3Spec, T5Spec, TransformerSpec, VaeSpec
from worker.sd3_build import adaln_zero_ as adaln_zero_  # part of this module's interface

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
        return self.vae_spec().scale_factor

    @property
    def latent_size(self) -> int:
        return scenes.IMAGE_SIZE // self.vae_scale_factor

    def check(self) -> None:
        spec = self.spec()
        spec.check()
        if self.t5_d_model % self.t5_heads:
            raise ValueError("T5 d_model must be divisible by its head count")
        if spec.max_image_side < MAX_PIXELS:
            raise ValueError(f"pos_embed_max_size admits only {spec.max_image_side}-pixel images")

    def spec(self, shift: float = 1.0) -> SD3Spec:
        """The whole pipeline's description; ``shift`` is the scheduler's timestep shift."""
        (clip_l, clip_g), (proj_l, proj_g) = self.clip_hidden, self.clip_projection
        return SD3Spec(
            clip_l=clip_spec(clip_l, proj_l, self.clip_layers),
            clip_g=clip_spec(clip_g, proj_g, self.clip_layers),
            t5=self.t5_spec(),
            vae=self.vae_spec(),
            transformer=TransformerSpec(
                sample_size=self.latent_size,  # the pipeline's default height/width: 64
                patch_size=self.patch_size,
                layers=self.layers,
                heads=self.heads,
                head_dim=self.head_dim,
                pos_embed_max_size=self.pos_embed_max_size,
                qk_norm="rms_norm",
                adaln_zero=True,
            ),
            scheduler_shift=shift,
        )

    def t5_spec(self) -> T5Spec:
        return T5Spec(
            d_model=self.t5_d_model,
            d_ff=2 * self.t5_d_model,
            d_kv=self.t5_d_model // self.t5_heads,
            layers=self.t5_layers,
            heads=self.t5_heads,
            feed_forward_proj="gated-gelu",  # as T5 v1.1, the encoder SD3 uses
            dropout_rate=0.0,
            encoder_only_config=True,
        )

    def vae_spec(self) -> VaeSpec:
        return VaeSpec(
            channels=self.vae_channels,
            groups=self.vae_groups,
            latent_channels=self.latent_channels,
            layers_per_block=1,
            sample_size=scenes.IMAGE_SIZE,
            # Placeholders: train_vae measures both from the latents of the scene set.
            scaling_factor=1.0,
            shift_factor=0.0,
        )


def clip_spec(hidden: int, projection: int, layers: int) -> ClipSpec:
    """A CLIP text encoder of the given size, shaped as CLIP-L is: heads of 16, a 4× MLP."""
    return ClipSpec(
        hidden=hidden,
        projection=projection,
        layers=layers,
        heads=max(1, hidden // 16),
        intermediate=4 * hidden,
        act="quick_gelu",
    )


def make_tokenizers() -> sd3_build.Tokenizers:
    corpus = scenes.caption_corpus()
    return sd3_build.Tokenizers(
        clip_l=text.build_clip_tokenizer(corpus),
        clip_g=text.build_clip_tokenizer(corpus),
        t5=text.build_t5_tokenizer(corpus),
    )


def make_clip(
    tokenizer: CLIPTokenizer, hidden: int, projection: int, layers: int, seed: int
) -> CLIPTextModelWithProjection:
    return sd3_build.build_clip(clip_spec(hidden, projection, layers), tokenizer, seed)


def make_t5(tokenizer: T5TokenizerFast, dims: Dims, seed: int) -> T5EncoderModel:
    return sd3_build.build_t5(dims.t5_spec(), tokenizer, seed)


def make_vae(dims: Dims, seed: int) -> AutoencoderKL:
    return sd3_build.build_vae(dims.vae_spec(), seed)


def make_transformer(dims: Dims, seed: int) -> SD3Transformer2DModel:
    return sd3_build.build_transformer(dims.spec(), seed)


def make_scheduler(shift: float) -> FlowMatchEulerDiscreteScheduler:
    return sd3_build.build_scheduler(shift)


def build_pipeline(
    seed: int, dims: Dims | None = None, shift: float = 1.0
) -> StableDiffusion3Pipeline:
    """All components, untrained; deterministic in ``seed`` (each gets its own sub-seed)."""
    dims = dims or Dims()
    dims.check()
    return sd3_build.build_pipeline(dims.spec(shift), make_tokenizers(), seed)


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
