"""The public checkpoints' architectures (worker/archs), and what serving one at full size needed.

Every component is built from its committed config on the meta device: real shapes and
parameter counts, no weights. The builder itself runs end to end on a shrunken copy of the
configs, loaded and served by the worker's pipeline.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel
from transformers import CLIPTextConfig, T5Config

from common.contract import GenerateParams, ModelInfo
from common.jobstore import Steer
from service import cli
from tests.helpers import job_params
from worker import archs, metrics, pipeline, real_model
from worker.runner import JobRunner
from worker.settings import WorkerSettings

B = 1e9
M = 1e6
# Published parameter counts, with a little room: (low, high).
TRANSFORMER = {
    "sd3-medium": (1.95 * B, 2.1 * B),
    "sd3.5-medium": (2.2 * B, 2.5 * B),
    "sd3.5-large": (8.0 * B, 8.2 * B),
}
SHARED = {
    "vae": (80 * M, 88 * M),
    "text_encoder": (120 * M, 127 * M),  # CLIP-L
    "text_encoder_2": (680 * M, 710 * M),  # OpenCLIP bigG
    "text_encoder_3": (4.6 * B, 4.9 * B),  # T5-XXL encoder
}
RECOMMENDED = {"sd3-medium": (28, 7.0), "sd3.5-medium": (40, 4.5), "sd3.5-large": (28, 3.5)}


def config(arch: str, component: str) -> dict[str, Any]:
    folder = archs.config_dir(arch, component)
    name = "scheduler_config.json" if component == "scheduler" else "config.json"
    data: dict[str, Any] = json.loads((folder / name).read_text())
    return data


@pytest.mark.parametrize("arch", archs.ARCHS)
def test_every_component_has_its_published_size(arch: str) -> None:
    with torch.device("meta"):
        sizes = {
            component: sum(p.numel() for p in real_model.build_model(arch, component).parameters())
            for component in archs.MODELS
        }
    for component, (low, high) in {"transformer": TRANSFORMER[arch], **SHARED}.items():
        assert low <= sizes[component] <= high, (component, sizes[component])


@pytest.mark.parametrize("arch", archs.ARCHS)
def test_the_components_fit_together(arch: str) -> None:
    t = config(arch, "transformer")
    clip_l, clip_g = config(arch, "text_encoder"), config(arch, "text_encoder_2")
    assert t["joint_attention_dim"] == config(arch, "text_encoder_3")["d_model"]
    assert t["pooled_projection_dim"] == clip_l["projection_dim"] + clip_g["projection_dim"]
    assert t["caption_projection_dim"] == t["num_attention_heads"] * t["attention_head_dim"]
    assert t["in_channels"] == t["out_channels"] == config(arch, "vae")["latent_channels"]
    assert config(arch, "scheduler")["shift"] == 3.0


@pytest.mark.parametrize(
    ("model_class", "component"),
    [(SD3Transformer2DModel, "transformer"), (AutoencoderKL, "vae")],
)
@pytest.mark.parametrize("arch", archs.ARCHS)
def test_diffusers_configs_hold_no_unknown_key(
    arch: str, model_class: type[Any], component: str
) -> None:
    _, unused, _ = model_class.extract_init_dict(config(arch, component))
    assert not unused


@pytest.mark.parametrize(
    ("config_class", "component"),
    [
        (CLIPTextConfig, "text_encoder"),
        (CLIPTextConfig, "text_encoder_2"),
        (T5Config, "text_encoder_3"),
    ],
)
def test_transformers_configs_hold_no_unknown_key(config_class: type[Any], component: str) -> None:
    data = config(archs.ARCHS[0], component)
    known = set(config_class().to_dict()) | {"architectures"}
    assert set(data) <= known, set(data) - known
    loaded = config_class.from_pretrained(archs.config_dir(archs.ARCHS[0], component))
    # An encoder has no output head to tie, and transformers 5's T5Config sets this its own way.
    kept = {key: getattr(loaded, key) for key in data if key != "tie_word_embeddings"}
    assert kept == {key: data[key] for key in kept}


def test_model_index_names_every_component() -> None:
    index = json.loads((archs.CONFIGS / archs.SHARED / "model_index.json").read_text())
    for component in (*archs.MODELS, "scheduler"):
        assert (archs.CONFIGS / archs.SHARED / component).is_dir() or component == "transformer"
        assert index[component][0] in ("diffusers", "transformers")
    for arch in archs.ARCHS:
        assert archs.config_dir(arch, "transformer").parent.name == arch
        assert archs.config_dir(arch, "vae").parent.name == archs.SHARED


@pytest.mark.parametrize("arch", archs.ARCHS)
def test_serving_defaults_are_the_model_cards(arch: str) -> None:
    with_t5 = real_model.serving_defaults(arch, t5=True)
    without = real_model.serving_defaults(arch, t5=False)
    steps, guidance = RECOMMENDED[arch]
    assert (with_t5.default_steps, with_t5.default_guidance_scale) == (steps, guidance)
    assert (with_t5.max_sequence_length, without.max_sequence_length) == (256, 77)


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="sd3-medium, "):
        archs.config_dir("sd4", "vae")


# ---- the CLI --------------------------------------------------------------------------------


def test_build_model_parses_an_architecture() -> None:
    args = cli.parser().parse_args(
        ["build-model", "--arch", "sd3.5-large", "--random", "--no-t5", "out"]
    )
    assert (args.arch, args.random, args.no_t5, args.out) == (
        "sd3.5-large",
        True,
        True,
        Path("out"),
    )
    tiny = cli.parser().parse_args(["build-model", "out"])
    assert (tiny.arch, tiny.random, tiny.no_t5) == (None, False, False)


def test_build_model_refuses_an_unknown_architecture(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["build-model", "--arch", "sd4", "--random", "out"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--arch", "sd3-medium"], "--arch needs --random"),
        (["--no-t5"], "go with --arch"),
        (["--random"], "go with --arch"),
    ],
)
def test_build_model_wants_its_options_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(["build-model", *argv, str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ---- the builder, end to end on shrunken configs ----------------------------------------------

# Every width cut down, with the relations between components kept (test above).
SHRINK = {
    "transformer": {
        "num_layers": 2,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "caption_projection_dim": 32,
        "joint_attention_dim": 64,
        "pooled_projection_dim": 32,
        "pos_embed_max_size": 64,
        "sample_size": 8,
    },
    "vae": {"block_out_channels": [8, 8, 8, 8], "norm_num_groups": 4, "layers_per_block": 1},
    "text_encoder": {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "projection_dim": 16,
    },
    "text_encoder_3": {"d_model": 64, "d_ff": 64, "d_kv": 16, "num_layers": 1, "num_heads": 2},
}
SHRINK["text_encoder_2"] = SHRINK["text_encoder"]
SMALL_ARCH = "sd3.5-medium"  # dual attention and QK norm: the most code paths


@pytest.fixture
def small_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "archs"
    shutil.copytree(archs.CONFIGS, copy, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(archs, "CONFIGS", copy)
    for component, changes in SHRINK.items():
        path = archs.config_dir(SMALL_ARCH, component) / "config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def params(info: ModelInfo, side: int, steps: int = 1) -> GenerateParams:
    return job_params(
        info.id,
        prompt="a red circle",
        width=side,
        height=side,
        steps=steps,
        guidance_scale=info.default_guidance_scale,
    )


def load(folder: Path, **settings: Any) -> pipeline.WarmPipeline:
    return pipeline.WarmPipeline(
        WorkerSettings(model=str(folder), torch_device="cpu", torch_dtype="float32", **settings)
    )


@pytest.mark.usefixtures("small_configs")
def test_a_built_folder_without_t5_serves_without_it(tmp_path: Path) -> None:
    folder = real_model.build(SMALL_ARCH, tmp_path / "model", t5=False)
    assert not (folder / "text_encoder_3").exists()
    weights = next((folder / "transformer").glob("*.safetensors"))
    assert b'"BF16"' in weights.read_bytes()[:4096]

    warm = load(folder)  # no SD3SERVE_DROP_T5 needed
    assert warm.pipe.text_encoder_3 is None
    assert warm.info.text_encoders == ["CLIPTextModelWithProjection"] * 2
    assert warm.max_sequence_length == 77
    assert (warm.info.default_steps, warm.info.default_guidance_scale) == RECOMMENDED[SMALL_ARCH]

    steps: list[int] = []
    prompt_encodings = metrics.PROMPT_ENCODE.labels(warm.info.id)
    before = prompt_encodings._sum.get()
    warm.warm_up()
    assert prompt_encodings._sum.get() == before  # the warm-up is no job
    (image,) = warm.generate(params(warm.info, 64, steps=2), lambda step, total: steps.append(step))
    assert image.size == (64, 64)
    # Step 0: the prompt is encoded and timed, denoising starts.
    assert steps == [0, 1, 2]
    assert prompt_encodings._sum.get() > before


@pytest.mark.usefixtures("small_configs")
def test_a_built_folder_with_t5_pads_it_to_256(tmp_path: Path) -> None:
    folder = real_model.build(SMALL_ARCH, tmp_path / "model", t5=True)
    warm = load(folder)
    assert warm.info.text_encoders[-1] == "T5EncoderModel"
    assert warm.max_sequence_length == 256
    assert load(folder, drop_t5=True).pipe.text_encoder_3 is None


@pytest.mark.usefixtures("small_configs")
def test_the_vae_tiles_above_its_threshold_only(tmp_path: Path) -> None:
    folder = real_model.build(SMALL_ARCH, tmp_path / "model", t5=False)
    warm = load(folder, vae_tile_above=64 * 64)
    vae = warm.pipe.vae
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == (64, 8)
    warm.generate(params(warm.info, 64))
    assert not vae.use_tiling
    (large,) = warm.generate(params(warm.info, 128))
    assert vae.use_tiling and large.size == (128, 128)


def test_the_default_tile_is_sd3s_own() -> None:
    with torch.device("meta"):
        vae = real_model.build_model(archs.ARCHS[0], "vae")
    own = (vae.tile_sample_min_size, vae.tile_latent_min_size)
    pipeline.set_vae_tile(vae, WorkerSettings().vae_tile_above)
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == own == (1024, 128)


# ---- what else a hand run found -----------------------------------------------------------------


@pytest.mark.parametrize("faster", [True, False])
def test_auto_dtype_on_a_cpu_is_the_faster_one(
    monkeypatch: pytest.MonkeyPatch, faster: bool
) -> None:
    monkeypatch.setattr(pipeline, "cpu_bfloat16_is_faster", lambda: faster)
    cpu = torch.device("cpu")
    assert pipeline.choose_dtype("auto", cpu) == (torch.bfloat16 if faster else torch.float32)
    assert pipeline.choose_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert pipeline.choose_dtype("float32", cpu) == torch.float32


def test_the_bfloat16_probe_answers() -> None:
    assert isinstance(pipeline.cpu_bfloat16_is_faster(), bool)


class _Store:
    def report(self, job_id: str, step: int, total: int) -> Steer:
        return Steer.go


def test_the_first_step_sample_leaves_out_the_prompt_encoding() -> None:
    labels = metrics.JobLabels("step-test", frozenset(), frozenset())
    runner = JobRunner(None, _Store(), None, labels)  # type: ignore[arg-type]
    on_step = runner._step_callback([], "step-test", "other")
    samples = metrics.STEP.labels("step-test", "other")
    time.sleep(0.2)  # the prompt being encoded
    on_step(0, 1)
    on_step(1, 1)
    assert samples._sum.get() < 0.1
