"""The GPU options (worker/accel.py) on the tiny model, on a CPU: settings refused with a clear
message, fused QKV, the SDPA backend, compilation per warm size, and bench/gpu.sh's tiny mode."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from common.contract import GenerateParams
from common.settings import SettingsError, env_var, load_settings
from tests.helpers import job_params
from worker.pipeline import WarmPipeline
from worker.settings import WorkerSettings, parse_sizes

ROOT = Path(__file__).parent.parent


def params(size: int = 64, seed: int = 3) -> GenerateParams:
    return job_params(
        "tiny", prompt="a red circle", width=size, height=size, guidance_scale=2.0, seed=seed
    )


def pipeline(model_dir: Path, **settings: object) -> WarmPipeline:
    return WarmPipeline(
        WorkerSettings(
            model=str(model_dir),
            model_name="tiny",
            torch_device="cpu",
            torch_dtype="float32",
            **settings,  # type: ignore[arg-type]
        )
    )


def max_difference(a: list[Image.Image], b: list[Image.Image]) -> int:
    return max(
        int(np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)).max())
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"warm_sizes": "1024"}, "warm_sizes"),
        ({"warm_sizes": "0x64"}, "warm_sizes"),
        ({"warm_sizes": "64x64,64x64"}, "warm_sizes"),
        ({"warm_sizes": ",".join(f"{8 * i}x64" for i in range(1, 10))}, "warm_sizes"),
        ({"compile": "true", "warmup": "false"}, "compile"),
        ({"compile": "true", "cpu_offload": "model"}, "cpu_offload"),
        ({"t5_8bit": "true", "drop_t5": "true"}, "t5_8bit"),
        ({"torch_device": "cpu", "cpu_offload": "model"}, "cpu_offload"),
        ({"torch_device": "cpu", "cpu_offload": "sequential"}, "cpu_offload"),
        ({"torch_device": "cpu", "t5_8bit": "true"}, "t5_8bit"),
        ({"torch_device": "cpu", "sdpa_backend": "efficient"}, "sdpa_backend"),
        ({"sdpa_backend": "fastest"}, "sdpa_backend"),
        ({"compile_backend": "tvm"}, "compile_backend"),
    ],
)
def test_bad_settings_are_refused_at_start_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    monkeypatch.chdir(Path(__file__).parent)  # away from any .env of the working tree
    for name, value in env.items():
        monkeypatch.setenv(env_var(name), value)
    with pytest.raises(SettingsError, match=env_var(named)):
        load_settings(WorkerSettings)


def test_good_settings_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).parent)
    monkeypatch.setenv(env_var("warm_sizes"), "1024x1024, 768x1344")
    monkeypatch.setenv(env_var("compile"), "true")
    monkeypatch.setenv(env_var("sdpa_backend"), "flash")
    settings = load_settings(WorkerSettings)
    assert settings.compile and settings.sdpa_backend == "flash"
    assert parse_sizes(settings.warm_sizes or "") == [(1024, 1024), (768, 1344)]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        # `auto` is a CPU here: what needs CUDA is refused once the device is known.
        ({"cpu_offload": "model"}, "cpu_offload"),
        ({"t5_8bit": True}, "t5_8bit"),
        ({"sdpa_backend": "cudnn"}, "sdpa_backend"),
    ],
)
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where auto picks a CPU")
def test_cuda_only_options_are_refused_at_load_on_a_cpu(
    model_dir: Path, settings: dict[str, object], named: str
) -> None:
    with pytest.raises(SettingsError, match=f"{env_var(named)}.*CUDA device"):
        WarmPipeline(WorkerSettings(model=str(model_dir), torch_device="auto", **settings))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sizes", "why"),
    [
        ("68x64", "a multiple of 8"),
        ("1024x1024", "between 64 and 512"),
        ("512x512", "pixels per job"),
    ],
)
def test_warm_sizes_the_model_does_not_serve_are_refused_at_load(
    model_dir: Path, sizes: str, why: str
) -> None:
    with pytest.raises(SettingsError, match=f"{env_var('warm_sizes')}.*{why}"):
        pipeline(model_dir, warm_sizes=sizes)


def test_fused_qkv_draws_the_same_images(model_dir: Path) -> None:
    plain = pipeline(model_dir)
    fused = pipeline(model_dir, fuse_qkv=True)
    attention = [m for m in fused.pipe.transformer.modules() if hasattr(m, "to_qkv")]
    assert attention and not any(hasattr(m, "to_q") for m in attention)  # no second copy
    # The tiny model has SD3.5's QK RMS norms, which diffusers' own fused processor skips.
    assert fused.pipe.transformer.config.qk_norm == "rms_norm"
    for seed in (3, 4):
        job = params(seed=seed)
        assert max_difference(plain.generate(job), fused.generate(job)) <= 1


def attention_ops(warm: WarmPipeline) -> set[str]:
    """The SDPA kernels the transformer's calls ran, as the profiler saw them."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        warm.generate(params())
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_the_sdpa_backend_setting_picks_the_kernel(model_dir: Path) -> None:
    math_ops = attention_ops(pipeline(model_dir, sdpa_backend="math"))
    flash_ops = attention_ops(pipeline(model_dir, sdpa_backend="flash"))
    assert "aten::_scaled_dot_product_attention_math" in math_ops
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in flash_ops
    # CLIP's attention is outside the setting; the transformer's calls are the difference.
    assert math_ops != flash_ops


def test_compile_warms_each_size_once_and_no_request_compiles(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch._dynamo.reset()
    eager = pipeline(model_dir)
    # dynamo's eager backend: the same tracing, guards and routing as inductor's, compiled in
    # seconds (inductor's C++ code generation takes minutes on this CPU).
    warm = pipeline(model_dir, compile=True, compile_backend="eager", warm_sizes="64x64,96x64")
    assert not warm.router.compiled_shapes  # nothing is compiled before the warm-up
    with caplog.at_level(logging.INFO, logger="sd3serve.worker"):
        warm.warm_up()
    warmed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warmed up")]
    assert [m.split(" in ")[0] for m in warmed] == ["warmed up at 64x64", "warmed up at 96x64"]
    assert len(warm.router.compiled_shapes) == 2
    assert warm.router.calls == {"compiled": 4}  # 2 sizes x 2 steps

    counters = torch._dynamo.utils.counters
    frames = dict(counters["frames"])
    images = warm.generate(params(64))
    assert dict(counters["frames"]) == frames  # a warm size: no compilation
    assert warm.router.calls == {"compiled": 6}
    assert max_difference(images, eager.generate(params(64))) <= 1

    warm.generate(params(128))  # not warm: eager, not compiled for it
    assert dict(counters["frames"]) == frames
    assert warm.router.calls == {"compiled": 6, "eager": 2}
    torch._dynamo.reset()


# Four processes' worth of torch imports and a service stack: about 2 minutes on this 2-core
# machine when it is busy, well within this.
@pytest.mark.timeout(600)
def test_the_gpu_bench_runs_in_its_tiny_mode(tmp_path: Path) -> None:
    """bench/gpu.sh end to end on the tiny model: builds it, measures direct and served runs,
    eager and compiled, and writes its JSON and markdown."""
    env = dict(os.environ) | {"PYTHON": str(ROOT / ".venv" / "bin" / "python")}
    if not Path(env["PYTHON"]).exists():
        env.pop("PYTHON")
    done = subprocess.run(
        [
            "bash",
            str(ROOT / "bench" / "gpu.sh"),
            "--tiny",
            "--out",
            str(tmp_path / "out"),
            "--cache",
            str(tmp_path / "cache"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu.json").read_text())["results"]
    for key in ("tiny/direct eager", "tiny/direct compiled"):
        assert results[key]["best_s"] > 0, results[key]
    assert results["tiny/direct compiled"]["calls"].get("eager", 0) == 0
    for kind in ("eager", "compiled"):
        assert results["tiny/served"][kind]["best_s"] > 0, results["tiny/served"]
    table = (tmp_path / "out" / "gpu.md").read_text()
    assert "| tiny | served compiled |" in table and "2.1 s" in table


def test_gpu_sh_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu.sh")], check=True)


# The GPU machine's image ("cuda": /work/.library/device/KINDS.md, read 2026-11-17) has these
# of the project's requirements; bench/gpu.sh carries the rest as wheels.
GPU_IMAGE_HAS = {
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "accelerate",
    "pillow",
    "prometheus-client",
    "anyio",
    "httpx",
    "tqdm",
    "uvloop",
}
# Accelerators the code runs without (uvicorn and redis-py pick them up when installed).
OPTIONAL_THERE = {"httptools", "hiredis"}


def test_gpu_sh_carries_every_requirement_the_gpu_image_lacks() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    needed = {
        canonicalize_name(requirement.name)
        for spec in [*project["dependencies"], *extras["api"], *extras["worker"]]
        for requirement in [Requirement(spec)]
    } | {"hiredis"}  # redis[hiredis]
    script = (ROOT / "bench" / "gpu.sh").read_text()
    carried_list = re.search(r"^CARRIED=\((.*?)\)", script, re.S | re.M)
    assert carried_list is not None
    carried = {canonicalize_name(name) for name in carried_list.group(1).split()}
    assert needed - carried - GPU_IMAGE_HAS - OPTIONAL_THERE == set()
