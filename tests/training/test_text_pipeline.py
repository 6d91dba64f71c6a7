"""Tokenizers and the untrained pipeline: the saved folder must load and run like a real SD3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from training import build, text  # noqa: E402  (after the optional-dependency checks)
from training.scenes import caption_corpus  # noqa: E402
from worker.settings import BUNDLED_MODEL_DIR  # noqa: E402

CAPTION = "a small red circle in the top left on a gray background"


def test_clip_tokenizer_round_trip(tmp_path: Path) -> None:
    tok = text.build_clip_tokenizer(caption_corpus())
    tok.save_pretrained(tmp_path)
    text.save_clip_files(tok, tmp_path)
    (tmp_path / "tokenizer.json").unlink()  # load from the classic vocab.json/merges.txt
    loaded = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    assert loaded.model_max_length == 77
    ids = loaded(CAPTION).input_ids
    # One token per word, between the start and end tokens.
    assert len(ids) == len(CAPTION.split()) + 2
    assert ids[0] == loaded.bos_token_id and ids[-1] == loaded.eos_token_id
    assert loaded.unk_token_id not in loaded("Zebra #42, ü").input_ids[1:-1]


def test_t5_tokenizer_round_trip(tmp_path: Path) -> None:
    tok = text.build_t5_tokenizer(caption_corpus())
    tok.save_pretrained(tmp_path)
    loaded = transformers.T5TokenizerFast.from_pretrained(tmp_path)
    assert loaded.model_max_length == text.T5_MAX_LENGTH
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id) == (0, 1, 2)
    ids = loaded(CAPTION).input_ids
    assert len(ids) == len(CAPTION.split()) + 1 and ids[-1] == 1
    assert 2 not in loaded("purple triangle, 42!").input_ids


def test_dimension_rules() -> None:
    build.Dims().check()
    with pytest.raises(ValueError):
        build.Dims(t5_d_model=64).check()
    with pytest.raises(ValueError):
        build.Dims(pos_embed_max_size=16).check()


@pytest.mark.parametrize(
    ("patch", "channels", "factor", "grid"),
    [(2, None, 4, 32), (1, None, 4, 64), (1, (32, 64, 64, 64), 8, 32), (2, (32, 64), 2, 64)],
)
def test_sized_dims_still_admit_256_pixels(
    patch: int, channels: tuple[int, ...] | None, factor: int, grid: int
) -> None:
    dims = build.Dims.sized(patch, layers=6, heads=3, vae_channels=channels)
    dims.check()
    assert (dims.vae_scale_factor, dims.pos_embed_max_size) == (factor, grid)
    assert dims.latent_size == 64 // factor


def test_sized_dims_split_the_same_width_into_other_heads() -> None:
    # The fifth recipe's shape: the default width of 96 as 6 heads of 16.
    dims = build.Dims.sized(1, layers=6, heads=6, head_dim=16)
    dims.check()
    config = build.make_transformer(dims, seed=0).config
    assert (config.num_attention_heads, config.attention_head_dim) == (6, 16)
    assert config.caption_projection_dim == 96


def test_the_default_dims_build_the_bundled_models_architecture() -> None:
    """The training defaults must be the shipped recipe: a default change without new weights,
    or new weights without the default change, shows here (the VAE's measured shift and scale
    aside)."""
    dims = build.Dims()
    built = {
        "transformer": build.make_transformer(dims, seed=0).config,
        "vae": build.make_vae(dims, seed=0).config,
    }
    measured = {"scaling_factor", "shift_factor"}
    for name, config in built.items():
        shipped = json.loads((BUNDLED_MODEL_DIR / name / "config.json").read_text())
        keys = {k for k in shipped if not k.startswith("_")} - measured
        assert json.loads(json.dumps({k: config[k] for k in keys})) == {
            k: shipped[k] for k in keys
        }, name


def test_saved_pipeline_loads_and_generates(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    pipe = build.build_pipeline(seed=0)
    build.save_pipeline(pipe, tmp_path)
    size = sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file())
    assert size < 20 * 2**20

    loaded = diffusers.StableDiffusion3Pipeline.from_pretrained(tmp_path, dtype=torch.float32)
    assert loaded.tokenizer.model_max_length == 77
    assert loaded.transformer.config.qk_norm == "rms_norm"
    # Same weights, same embeddings as the in-memory pipeline.
    a = build.encode_captions(pipe, [CAPTION])
    b = build.encode_captions(loaded, [CAPTION])
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    loaded.set_progress_bar_config(disable=True)
    out = loaded(
        CAPTION,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (1, 64, 64, 3)
    big = loaded(
        CAPTION,
        height=256,
        width=256,
        num_inference_steps=1,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert big.shape == (1, 256, 256, 3)
