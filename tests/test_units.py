"""Unit tests of pure logic: parameter resolution, Prefer parsing, labels, the result store."""

from __future__ import annotations

import gc
import io
import json
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request

from common.contract import GenerateRequest, ModelInfo, OutputFormat
from common.gc_freeze import freeze_startup_objects
from common.jobstore import decode_record
from service.client import output_paths
from service.errors import InvalidParameter
from service.params import parse_prefer_wait, resolve
from service.routes.deps import LinksAt
from tests.helpers import job_params
from worker.encode import PngEncoder, PngOptions, PngStrategy, encode, image_parameters
from worker.metrics import JobLabels, resolution_label, steps_label
from worker.settings import DEFAULT_PNG

SD3 = ModelInfo(
    id="sd3",
    source="/models/sd3",
    pipeline="StableDiffusion3Pipeline",
    device="cuda",
    dtype="bfloat16",
    size_multiple=16,
    min_size=256,
    max_size=2048,
    default_width=1024,
    default_height=1024,
    default_steps=28,
    default_guidance_scale=7.0,
    scheduler="FlowMatchEulerDiscreteScheduler",
    scheduler_shift=3.0,
    text_encoders=["clip", "clip", "t5"],
)


def test_resolve_fills_model_defaults_and_picks_a_seed() -> None:
    params = resolve(GenerateRequest(prompt="  a cat  "), SD3)
    assert (params.width, params.height, params.steps, params.guidance_scale) == (
        1024,
        1024,
        28,
        7.0,
    )
    assert params.prompt == "a cat"
    assert params.model == "sd3"
    assert 0 <= params.seed < 2**32
    assert params.output_format is OutputFormat.png
    seeds = {resolve(GenerateRequest(prompt="a"), SD3).seed for _ in range(20)}
    assert len(seeds) > 1


def test_resolve_keeps_explicit_values() -> None:
    request = GenerateRequest(
        prompt="a",
        width=1216,
        height=832,
        steps=4,
        guidance_scale=0,
        seed=0,
        num_images=4,
        output_format=OutputFormat.webp,
    )
    params = resolve(request, SD3)
    assert (params.width, params.height, params.steps, params.guidance_scale) == (1216, 832, 4, 0)
    assert (params.seed, params.num_images, params.output_format) == (0, 4, OutputFormat.webp)


@pytest.mark.parametrize(
    ("width", "height", "field", "words"),
    [
        (1000, 1024, "width", "try 992 or 1008"),
        (1024, 100, "height", "multiple of 16"),
        # Only sizes the model makes are offered: one, or the nearest end of the range.
        (250, 1024, "width", "got 250, try 256 "),
        (2056, 1024, "width", "got 2056, try 2048 "),
        (8, 1024, "width", "got 8, try 256 "),
        (1024, 3000, "height", "got 3000, try 2048 "),
        (240, 1024, "width", "between 256 and 2048"),
        (1024, 2064, "height", "between 256 and 2048"),
    ],
)
def test_resolve_teaches_the_size_rules(width: int, height: int, field: str, words: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        resolve(GenerateRequest(prompt="a", width=width, height=height), SD3)
    assert err.value.field == field
    assert words in err.value.message + " "


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("respond-async", None),
        ("wait=5", 5),
        ("respond-async, wait=60", 60),
        ("WAIT = 0", 0),
        ('wait="7"', 7),
        ("handling=lenient; foo, wait=3", 3),
    ],
)
def test_prefer_wait_parsing(header: str | None, expected: int | None) -> None:
    assert parse_prefer_wait(header, 60) == expected


@pytest.mark.parametrize(
    "header",
    [
        "wait=61",
        "wait=",
        "wait=-2",
        "wait=2.5",
        "wait=abc",
        # str.isdigit() passes superscripts, which int() then refuses.
        "wait=¹",
        "wait=²",
        "wait=³",
        # Digits of other scripts, which int() would read.
        "wait=٣",
        "wait=３",
        "wait=" + "9" * 5000,  # past int()'s 4300 digits
        "wait=1e3",
        "wait=0x10",
        "wait=+5",
        "wait=5 s",
    ],
)
def test_prefer_wait_refusals(header: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        parse_prefer_wait(header, 60)
    assert err.value.field == "prefer"
    assert len(err.value.message) < 200


def test_prefer_wait_leading_zeros() -> None:
    assert parse_prefer_wait("wait=" + "0" * 5000 + "7", 60) == 7
    assert parse_prefer_wait("wait=000", 60) == 0


def test_pixel_budget_defaults_to_four_native_images() -> None:
    assert SD3.max_pixels == 4 * 1024 * 1024
    # A record published by a worker older than the field: the same default.
    old = SD3.model_dump(exclude={"max_pixels"})
    assert ModelInfo.model_validate_json(json.dumps(old)).max_pixels == 4 * 1024 * 1024
    assert SD3.model_copy(update={"max_pixels": 5}).max_pixels == 5


@pytest.mark.parametrize(
    ("width", "height", "num_images"),
    [(1024, 1024, 4), (2048, 2048, 1), (1216, 832, 4), (2048, 1024, 2)],
)
def test_pixel_budget_admits(width: int, height: int, num_images: int) -> None:
    request = GenerateRequest(prompt="a", width=width, height=height, num_images=num_images)
    assert resolve(request, SD3).num_images == num_images


@pytest.mark.parametrize(
    ("budget", "width", "height", "num_images", "field", "words"),
    [
        (None, 2048, 2048, 2, "num_images", "at most 4,194,304 pixels per job"),
        (None, 2048, 1024, 3, "num_images", "ask for at most 2 at this size"),
        (512 * 512, 1024, 1024, 1, "width", "at most 262,144 pixels per job"),
        (512 * 512, 512, 512, 2, "num_images", "ask for at most 1 at this size"),
    ],
)
def test_pixel_budget_refuses_naming_the_field(
    budget: int | None, width: int, height: int, num_images: int, field: str, words: str
) -> None:
    info = SD3 if budget is None else SD3.model_copy(update={"max_pixels": budget})
    request = GenerateRequest(prompt="a", width=width, height=height, num_images=num_images)
    with pytest.raises(InvalidParameter) as err:
        resolve(request, info)
    assert err.value.field == field
    assert words in err.value.message, err.value.message


def test_metric_labels_are_bounded() -> None:
    labels = JobLabels("sd3", frozenset({"1024x1024", "64x64"}), frozenset({"28", "4"}))
    assert labels.of(1024, 1024, 28) == ("sd3", "1024x1024", "28")
    assert labels.of(1024, 1008, 27) == ("sd3", "other", "other")
    assert resolution_label(64, 64, labels.resolutions) == "64x64"
    assert steps_label(4, labels.steps) == "4"


def test_output_paths() -> None:
    assert output_paths(Path("a/out.png"), 1) == [Path("a/out.png")]
    assert output_paths(Path("out.webp"), 2) == [Path("out-0.webp"), Path("out-1.webp")]


def test_record_timings_come_from_redis_timestamps() -> None:
    record = decode_record(
        "ab" * 16,
        {
            "status": "succeeded",
            "created_at": "100.0",
            "started_at": "100.5",
            "finished_at": "103.0",
            "params": resolve(GenerateRequest(prompt="a"), SD3).model_dump_json(),
            "timings": '{"inference": 2.0, "encode": 0.25}',
            "image_count": "1",
            "step": "28",
            "total": "28",
            "attempts": "1",
        },
    )
    t = record.timings
    assert (t.queue_wait, t.inference, t.encode, t.total) == (0.5, 2.0, 0.25, 3.0)
    assert record.progress is not None and record.progress.step == 28


def _picture(width: int, height: int) -> Image.Image:
    """Smooth with a little noise, as a generated picture is; pure noise would not compress."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 2, y * 2, (x + y) % 256], axis=-1) + np.random.default_rng(0).integers(
        0, 4, (height, width, 3)
    )
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def test_a_png_under_any_strategy_and_level_keeps_the_pixels_and_the_recipe() -> None:
    image = _picture(128, 96)
    params = job_params(
        "m",
        prompt="a red circle",
        width=128,
        height=96,
        steps=4,
        guidance_scale=4.5,
        seed=7,
        num_images=2,
    )
    recipe = image_parameters(params, 1)
    assert recipe["seed"] == 8
    written = {
        (level, strategy): encode(
            image, OutputFormat.png, recipe, png=PngOptions(PngEncoder.pillow, level, strategy)
        )
        for level in (0, 1, 9)
        for strategy in PngStrategy
    }
    size = {options: len(data) for options, data in written.items()}
    default = PngStrategy.default
    assert size[9, default] < size[1, default] < size[0, default]
    # What DEFAULT_PNG_STRATEGY's choice rests on: smaller than the default strategy at its own
    # level.
    assert size[1, PngStrategy.rle] < size[1, default]
    assert size[1, PngStrategy.rle] == size[9, PngStrategy.rle]
    for data in written.values():
        decoded = Image.open(io.BytesIO(data))
        assert np.array_equal(np.asarray(decoded), np.asarray(image))
        assert json.loads(decoded.info["parameters"]) == recipe


@pytest.mark.parametrize("size", [(128, 96), (1, 1), (3, 7), (1024, 8)])
def test_the_fast_png_encoder_writes_a_valid_png_with_the_pixels_and_the_recipe(
    size: tuple[int, int],
) -> None:
    image = _picture(*size)
    recipe = image_parameters(job_params("m", prompt='un château, 日本の城 "quoted"'), 0)
    data = encode(
        image, OutputFormat.png, recipe, png=replace(DEFAULT_PNG, encoder=PngEncoder.fast)
    )
    Image.open(io.BytesIO(data)).verify()  # every chunk's CRC, and the chunks' order
    decoded = Image.open(io.BytesIO(data))
    assert (decoded.format, decoded.mode, decoded.size) == ("PNG", "RGB", size)
    assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert json.loads(decoded.info["parameters"]) == recipe
    assert decoded.info["Software"] == "sd3-serve"
    stored = encode(
        image, OutputFormat.png, recipe, png=PngOptions(PngEncoder.pillow, 0, PngStrategy.rle)
    )
    if size == (128, 96):  # large enough for deflate to show
        assert len(data) < 0.8 * len(stored)


def test_the_fast_png_encoder_leaves_other_modes_to_pillow() -> None:
    rgba = _picture(16, 8).convert("RGBA")
    options = replace(DEFAULT_PNG, encoder=PngEncoder.fast)
    decoded = Image.open(io.BytesIO(encode(rgba, OutputFormat.png, {}, png=options)))
    assert decoded.mode == "RGBA" and np.array_equal(np.asarray(decoded), np.asarray(rgba))


def test_freezing_collects_startup_garbage_then_exempts_what_lives() -> None:
    class Node:
        other: object = None

    garbage, kept = Node(), Node()
    garbage.other = garbage  # a cycle only the collector frees
    dead = weakref.ref(garbage)
    del garbage
    try:
        freeze_startup_objects()
        assert dead() is None  # collected before the freeze, not kept forever
        assert gc.get_freeze_count() > 0
        assert not any(obj is kept for obj in gc.get_objects())  # out of the collector's reach
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(
    "parts",
    [
        {"headers": [(b"host", b"api.example:8000")], "server": ("10.0.0.1", 8000)},
        {"scheme": "https", "headers": [], "server": ("10.0.0.1", 443)},
        {"headers": [], "server": ("::1", 8000)},
        {"headers": [(b"accept", b"*/*"), (b"host", b"h")], "root_path": "/api"},
        {"headers": [(b"host", b"h")], "root_path": "/mount", "app_root_path": "/api/"},
        {"headers": [(b"host", b"bad host:x")], "server": ["10.0.0.1", 8080]},
        {"headers": []},
    ],
)
def test_job_links_start_at_starlettes_base_url(parts: dict[str, object]) -> None:
    scope = {"type": "http", "app": None, "path": "/v1/generate", "query_string": b"", **parts}
    for _ in range(2):  # built, then cached
        request = Request(scope)
        assert LinksAt.of(request).base_url == str(request.base_url)
