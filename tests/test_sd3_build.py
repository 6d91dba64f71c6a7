"""The shared SD3 builder: the widths it derives, the rule it checks, how it seeds."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from worker import sd3_build, tiny_model
from worker.sd3_build import SD3Spec

SPEC = tiny_model.SPEC


def test_widths_one_component_fixes_in_another_are_derived() -> None:
    config = sd3_build.build_transformer(SPEC, seed=0).config
    t = SPEC.transformer
    assert config.joint_attention_dim == SPEC.t5.d_model
    assert config.pooled_projection_dim == SPEC.clip_l.projection + SPEC.clip_g.projection
    assert config.caption_projection_dim == t.heads * t.head_dim
    assert config.in_channels == config.out_channels == SPEC.vae.latent_channels


def test_t5_narrower_than_both_clips_is_refused() -> None:
    SPEC.check()
    narrow = replace(SPEC, t5=replace(SPEC.t5, d_model=SPEC.clip_l.hidden))
    with pytest.raises(ValueError, match="T5 d_model"):
        narrow.check()


def test_the_tiny_model_admits_512_pixels() -> None:
    assert SPEC.vae.scale_factor == 4
    assert SPEC.max_image_side == 512


def test_a_component_seed_fixes_its_weights_whatever_else_changes() -> None:
    a = sd3_build.build_vae(SPEC.vae, seed=1)
    torch.rand(3)  # the global generator moves on; the seed resets it
    b = sd3_build.build_vae(SPEC.vae, seed=1)
    c = sd3_build.build_vae(SPEC.vae, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_adaln_zero_starts_the_transformer_at_a_zero_output() -> None:
    spec: SD3Spec = replace(SPEC, transformer=replace(SPEC.transformer, adaln_zero=True))
    zeroed = sd3_build.build_transformer(spec, seed=0)
    plain = sd3_build.build_transformer(SPEC, seed=0)
    assert not zeroed.proj_out.weight.any() and not zeroed.norm_out.linear.weight.any()
    assert plain.proj_out.weight.any()
    # Only the gates and the output layer differ: the rest is the same draw.
    assert torch.equal(zeroed.pos_embed.proj.weight, plain.pos_embed.proj.weight)


def test_the_tiny_pipeline_is_deterministic() -> None:
    a = tiny_model.build_pipeline().transformer.state_dict()
    b = tiny_model.build_pipeline().transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
