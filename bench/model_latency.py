"""Latency of one pipeline call on two model folders, alternating in one run.

For weighing a change to the bundled model's shape (patch size, layers) against what it costs
a request: both folders are loaded the way a worker loads them and called at each one's own
default size, steps and guidance, A then B, `--runs` times; prints the median of each and
their ratio.

    .venv/bin/python bench/model_latency.py MODEL_A MODEL_B [--runs 10] [--steps N]

To compare with an earlier bundled model: `git archive REV worker/models/sd3-scenes | tar -x
-C /tmp/old`, then pass `/tmp/old/worker/models/sd3-scenes` as A.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common.contract import GenerateParams, OutputFormat
from worker.pipeline import WarmPipeline
from worker.settings import WorkerSettings


def params_for(pipe: WarmPipeline, steps: int | None) -> GenerateParams:
    info = pipe.info
    return GenerateParams(
        model=info.id,
        prompt="a small green square in the top left on a white background",
        negative_prompt="",
        width=info.default_width,
        height=info.default_height,
        steps=steps or info.default_steps,
        guidance_scale=info.default_guidance_scale,
        seed=0,
        num_images=1,
        output_format=OutputFormat.png,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_a")
    parser.add_argument("model_b")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, help="default: each model's own")
    args = parser.parse_args()

    pipes = [
        WarmPipeline(WorkerSettings(model=m, torch_device="cpu", torch_dtype="float32"))
        for m in (args.model_a, args.model_b)
    ]
    calls = [params_for(p, args.steps) for p in pipes]
    for pipe, params in zip(pipes, calls, strict=True):
        pipe.warm_up()
        pipe.generate(params)
    times: list[list[float]] = [[], []]
    for _ in range(args.runs):
        for pipe, params, series in zip(pipes, calls, times, strict=True):
            started = time.perf_counter()
            pipe.generate(params)
            series.append(time.perf_counter() - started)

    a, b = (statistics.median(t) for t in times)
    print(f"{args.runs} runs each, alternating")
    for name, params, value in (("A", calls[0], a), ("B", calls[1], b)):
        print(
            f"  {name}  {params.width}x{params.height}, {params.steps} steps, "
            f"guidance {params.guidance_scale}: median {value * 1000:8.1f} ms"
        )
    print(f"  B / A = {b / a:.2f}")


if __name__ == "__main__":
    main()
