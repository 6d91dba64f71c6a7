"""The text conditioning as training and the swap probe cut it up: per-encoder dropout must
replace exactly one encoder's share with the empty prompt's, and the probe's swaps exactly
the part they name."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from training import build, probe, run, train_transformer
from training.__main__ import parse_args
from training.evaluate import evaluation_scenes
from training.scenes import HELD_OUT
from worker.settings import BUNDLED_MODEL_DIR

CAPTION = "a small red circle in the center on a white background"


@pytest.fixture(scope="module")
def pipe_and_table() -> tuple[object, train_transformer.TextTable]:
    pipe = build.build_pipeline(seed=0)
    _, table = run.caption_table(pipe, [CAPTION], 32, build.Dims())
    return pipe, table


def test_encoder_parts_match_the_pipelines_own_encoders(
    pipe_and_table: tuple[object, train_transformer.TextTable],
) -> None:
    pipe, table = pipe_and_table
    embeds, pooled = table.embeds[0], table.pooled[0]
    clip_l, clip_g, t5 = table.parts
    for part, index in ((clip_l, 0), (clip_g, 1)):
        tokens, pooled_one = pipe._get_clip_prompt_embeds(  # type: ignore[attr-defined]
            prompt=CAPTION, device="cpu", clip_skip=None, clip_model_index=index
        )
        torch.testing.assert_close(embeds[part.tokens, part.channels], tokens[0])
        torch.testing.assert_close(pooled[part.pooled], pooled_one[0])
    t5_tokens = pipe._get_t5_prompt_embeds(  # type: ignore[attr-defined]
        prompt=CAPTION, max_sequence_length=32, device="cpu"
    )
    torch.testing.assert_close(embeds[t5.tokens, t5.channels], t5_tokens[0])


def test_dropping_every_encoder_is_the_empty_prompt_and_none_changes_nothing(
    pipe_and_table: tuple[object, train_transformer.TextTable],
) -> None:
    _, table = pipe_and_table
    embeds, pooled = table.embeds[[0, 0]], table.pooled[[0, 0]]
    gen = torch.Generator().manual_seed(0)
    all_e, all_p = train_transformer.drop_encoders(embeds, pooled, table, 1.0, gen)
    assert torch.equal(all_e, table.embeds[[table.null] * 2])
    assert torch.equal(all_p, table.pooled[[table.null] * 2])
    none_e, none_p = train_transformer.drop_encoders(embeds, pooled, table, 0.0, gen)
    assert torch.equal(none_e, embeds) and torch.equal(none_p, pooled)


def test_one_dropped_encoder_leaves_the_others(
    pipe_and_table: tuple[object, train_transformer.TextTable],
) -> None:
    _, table = pipe_and_table
    clip_l, _, t5 = table.parts
    only_t5 = train_transformer.TextTable(table.embeds, table.pooled, table.null, (t5,))
    gen = torch.Generator().manual_seed(0)
    e, p = train_transformer.drop_encoders(table.embeds[[0]], table.pooled[[0]], only_t5, 1.0, gen)
    assert torch.equal(e[0, t5.tokens], table.embeds[table.null, t5.tokens])
    assert torch.equal(e[0, clip_l.tokens], table.embeds[0, clip_l.tokens])
    assert torch.equal(p[0], table.pooled[0])  # T5 has no pooled output


def test_swaps_take_exactly_the_named_part() -> None:
    own_e, own_p = torch.zeros(2, 109, 96), torch.zeros(2, 96)
    alt_e, alt_p = torch.ones(2, 109, 96), torch.ones(2, 96)
    expected = {  # (CLIP tokens, T5 tokens, pooled) taken from the other caption
        "nothing": (0, 0, 0),
        "pooled": (0, 0, 1),
        "CLIP tokens": (1, 0, 0),
        "T5 tokens": (0, 1, 0),
        "everything": (1, 1, 1),
    }
    assert set(expected) == set(probe.PARTS)
    for part, (clip, t5, pooled) in expected.items():
        e, p = probe.swap(own_e, own_p, alt_e, alt_p, part)
        assert torch.all(e[:, :77] == clip) and torch.all(e[:, 77:] == t5), part
        assert torch.all(p == pooled), part
    with pytest.raises(ValueError, match="unknown part"):
        probe.swap(own_e, own_p, alt_e, alt_p, "pooled vector")


def test_variance_shares_separate_additive_words_from_their_interaction() -> None:
    gen = torch.Generator().manual_seed(0)
    colour, shape = torch.randn(6, 1, 8, generator=gen), torch.randn(1, 3, 8, generator=gen)
    a, b, both = probe.variance_shares(colour + shape + 5.0)
    assert both == pytest.approx(0.0, abs=1e-12) and a + b == pytest.approx(1.0)
    # Each colour effect is repeated over the 3 shapes, each shape effect over the 6 colours.
    colour_energy = 3 * float((colour - colour.mean(0)).pow(2).sum())
    shape_energy = 6 * float((shape - shape.mean(1)).pow(2).sum())
    assert a == pytest.approx(colour_energy / (colour_energy + shape_energy))
    pure = torch.randn(6, 3, 8, generator=gen)
    pure = pure - pure.mean(0, keepdim=True) - pure.mean(1, keepdim=True) + pure.mean((0, 1))
    assert probe.variance_shares(pure)[2] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in probe.variance_shares(torch.ones(6, 3, 8)))


def test_the_other_caption_differs_only_in_a_seen_shape() -> None:
    for scene in evaluation_scenes()["seen"]:
        other = probe.other_shape(scene)
        assert other.shape != scene.shape and (other.shape, other.colour) not in HELD_OUT
        assert (other.colour, other.size, other.position, other.background) == (
            scene.colour,
            scene.size,
            scene.position,
            scene.background,
        )


def test_the_probe_command_runs_on_the_bundled_model() -> None:
    argv = [sys.executable, "-m", "training", "probe", str(BUNDLED_MODEL_DIR)]
    argv += ["--steps", "2", "--seeds", "0", "--threads", "1"]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    mixing, swaps = done.stdout.strip().split("\n\n")
    assert [r[:30].strip() for r in mixing.splitlines()[1:]] == [
        "pooled vector",
        "T5 state at the shape word",
    ]
    for row in mixing.splitlines()[1:]:
        assert sum(float(v) for v in row[30:].split()) == pytest.approx(1.0, abs=2e-3)
    rows = swaps.splitlines()[1:]
    assert [r[:30].strip() for r in rows] == list(probe.PARTS)
    for row in rows:
        own, other = (int(cell.split("/")[0]) for cell in row[30:].split())
        assert own + other <= 30


@pytest.mark.parametrize(
    "option", ["--encoder-drop", "--cfg-drop", "--colourless", "--vae-recolour"]
)
def test_probabilities_outside_0_to_1_are_refused_at_parse_time(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        getattr(parse_args(["all", "--out", "m", option, "0.463"]), option[2:].replace("-", "_"))
        == 0.463
    )
    for bad in ("1.5", "-0.1"):
        with pytest.raises(SystemExit):
            parse_args(["all", "--out", "m", option, bad])
        assert f"argument {option}: {bad} is not between 0 and 1" in capsys.readouterr().err


def test_a_negative_object_margin_is_refused_at_parse_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse_args(["all", "--out", "m", "--vae-object-margin", "2"]).vae_object_margin == 2
    with pytest.raises(SystemExit):
        parse_args(["all", "--out", "m", "--vae-object-margin", "-1"])
    assert "argument --vae-object-margin: -1 is negative" in capsys.readouterr().err


def test_vae_seed_moves_only_the_vae_draw() -> None:
    default = run.vae_config(parse_args(["all", "--out", "m", "--seed", "3"]))
    other = run.vae_config(parse_args(["all", "--out", "m", "--seed", "3", "--vae-seed", "7"]))
    assert (default.seed, other.seed) == (3, 7)
    assert parse_args(["all", "--out", "m", "--vae-seed", "7"]).seed == 0


def test_vae_precision_picks_bf16_autocast() -> None:
    def bf16(*options: str) -> bool:
        return run.vae_config(parse_args(["all", "--out", "m", *options])).bf16

    assert not bf16()  # fp32 by default: it reproduces the shipped VAE
    assert bf16("--vae-precision", "bf16")
    assert not bf16("--vae-precision", "fp32", "--device", "cuda")
    assert bf16("--vae-precision", "auto", "--device", "cuda")


def test_a_model_size_under_1_is_refused_at_parse_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse_args(["all", "--out", "m", "--heads", "6", "--head-dim", "16"])
    assert (args.heads, args.head_dim) == (6, 16)
    for option in ("--patch-size", "--layers", "--heads", "--head-dim"):
        with pytest.raises(SystemExit):
            parse_args(["all", "--out", "m", option, "0"])
        assert f"argument {option}: 0 is not positive" in capsys.readouterr().err


def test_a_flow_object_weight_under_1_is_refused_at_parse_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse_args(["all", "--out", "m", "--flow-object-weight", "10"]).flow_object_weight == 10
    for bad in ("0.5", "nan"):
        with pytest.raises(SystemExit):
            parse_args(["all", "--out", "m", "--flow-object-weight", bad])
        assert f"argument --flow-object-weight: {bad} is under 1" in capsys.readouterr().err
