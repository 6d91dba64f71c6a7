"""The GPU benchmark behind bench/gpu.sh: SD3 Medium and SD3.5 Large, real architectures with
random weights, at 1024², 28 steps, bfloat16; eager against compiled, a direct pipeline call
against one job through the service, with peak GPU memory; and whether SD3.5 Large fits in
24 GiB with T5 dropped, or with T5 kept and the model offloaded.

    bench/gpu.sh [--out DIR] [--budget-s 540]      # on a CUDA machine (docs/performance.md)
    bench/gpu.sh --tiny [--out DIR]                # the same runs on the tiny model, on a CPU

Every measurement runs in a process of its own (`gpu.py direct ...`), so its peak memory is its
own, and under a timeout taken from what is left of the budget: a phase the budget cannot fit
is recorded as skipped, and the run ends in time whatever happens. Results go to DIR as
gpu.json and gpu.md (a markdown table), each written again after every phase.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from common.settings import env_var
from service.dev import Stack, free_port, start_api, start_redis, start_worker, wait_until

GIB = 2**30
# A 24 GB card (RTX 4090, A10, L4) offers 24 GiB; the CUDA context, cuBLAS's workspace and the
# allocator's slack take some of it outside torch's count, so torch may have this much.
FIT_GIB = 23.0
# The anchors of issue 26: SD3 Medium at 1024², 28 steps.
ANCHORS = {
    "H100 eager (diffusers)": 2.1,
    "H800 with OneDiff": 1.21,
    "target, end to end": 1.0,
}
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
TERMINAL = {"succeeded", "failed", "canceled"}
# The longest `Prefer: wait` the API honours; a longer job is then polled.
MAX_WAIT_S = 60


@dataclass(frozen=True)
class Mode:
    """What one run of the benchmark measures on: the real architectures on CUDA, or the tiny
    model on a CPU (the same code paths, in seconds)."""

    tiny: bool
    size: int
    steps: int
    repeats: int
    device: str
    dtype: str
    compile_backend: str


GPU = Mode(
    tiny=False,
    size=1024,
    steps=28,
    repeats=3,
    device="cuda",
    dtype="bfloat16",
    compile_backend="inductor",
)
# Tiny: 64², 2 steps, float32 (this CPU's fast dtype), and dynamo's eager backend: inductor's
# C++ compilation takes minutes on a small CPU, and the routing it feeds is the same.
TINY = Mode(
    tiny=True,
    size=64,
    steps=2,
    repeats=1,
    device="cpu",
    dtype="float32",
    compile_backend="eager",
)


# --- one measurement, in a process of its own ---


def direct(args: argparse.Namespace) -> dict[str, Any]:
    """Load the pipeline as a worker does, warm it at the size, then time `repeats` calls."""
    import torch

    from common.contract import GenerateParams, OutputFormat
    from worker.pipeline import WarmPipeline
    from worker.settings import WorkerSettings

    cuda = args.device.startswith("cuda")
    if cuda and args.cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(args.cap_gib * GIB / total)
    started = time.perf_counter()
    settings = WorkerSettings(
        model=args.model,
        model_name="bench",
        torch_device=args.device,
        torch_dtype=args.dtype,
        drop_t5=args.drop_t5,
        cpu_offload=args.cpu_offload,
        compile=args.compile,
        compile_backend=args.compile_backend,
        warm_sizes=f"{args.size}x{args.size}",
    )
    pipeline = WarmPipeline(settings)
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    pipeline.warm_up()
    warm_s = time.perf_counter() - started
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    params = GenerateParams(
        model="bench",
        prompt=PROMPT,
        negative_prompt="",
        width=args.size,
        height=args.size,
        steps=args.steps,
        guidance_scale=pipeline.info.default_guidance_scale,
        seed=1,
        num_images=1,
        output_format=OutputFormat.png,
    )
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        pipeline.generate(params)  # returns PIL images: the GPU work is done
        times.append(time.perf_counter() - started)
    result: dict[str, Any] = {
        "load_s": load_s,
        "warm_up_s": warm_s,
        "times_s": times,
        "best_s": min(times),
        "calls": dict(pipeline.router.calls),
        "text_encoders": pipeline.info.text_encoders,
    }
    if cuda:
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        result["gpu"] = torch.cuda.get_device_name(0)
    return result


def run_direct(mode: Mode, model: Path, timeout_s: float, **options: Any) -> dict[str, Any]:
    """`direct` in a child process (in this one for the tiny model: a process start costs more
    than its runs); its result, or why there is none."""
    argv = [sys.executable, __file__, "direct", "--model", str(model)]
    argv += ["--device", mode.device, "--dtype", mode.dtype, "--size", str(mode.size)]
    argv += ["--steps", str(mode.steps), "--repeats", str(mode.repeats)]
    argv += ["--compile-backend", mode.compile_backend]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            argv += [flag, str(value)]
    if mode.tiny:
        try:
            return direct(parser().parse_args([*argv[2:], "--result", os.devnull]))
        except Exception as exc:  # recorded as the run's result, like a child's failure
            return {"error": f"{type(exc).__name__}: {exc}"}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        try:
            done = subprocess.run(
                [*argv, "--result", out.name], timeout=timeout_s, capture_output=True, text=True
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s"}
        if done.returncode != 0:
            return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
        result: dict[str, Any] = json.loads(Path(out.name).read_text())
        return result


# --- one job through the service ---


def served(mode: Mode, model: Path, work: Path, timeout_s: float) -> dict[str, Any]:
    """Redis, the API and two workers on the folder, one eager and one compiled, each serving
    it under its own name; then `repeats` jobs to each, one at a time, timed from the POST
    to the image's last byte."""
    deadline = time.monotonic() + timeout_s
    base = dict(os.environ) | {
        env_var("model"): str(model),
        env_var("torch_device"): mode.device,
        env_var("torch_dtype"): mode.dtype,
        env_var("warm_sizes"): f"{mode.size}x{mode.size}",
        env_var("compile_backend"): mode.compile_backend,
        env_var("result_store"): f"file://{work / 'results'}",
    }
    names = {"eager": "bench-eager", "compiled": "bench-compiled"}
    stack = Stack()
    results: dict[str, Any] = {}
    try:
        base[env_var("redis_url")] = start_redis(stack, work, base)
        for kind, name in names.items():
            env = base | {env_var("model_name"): name, env_var("compile"): str(kind == "compiled")}
            start_worker(stack, env, name)
        url = start_api(stack, base, "127.0.0.1", free_port())
        with httpx.Client(base_url=url, timeout=None) as client:

            def ready() -> bool:
                return bool(client.get("/readyz").json()["workers"] >= len(names))

            wait_until(ready, stack, "two warm workers", max(1.0, deadline - time.monotonic()))
            for kind, name in names.items():
                times, inference = [], []
                for _ in range(mode.repeats):
                    body = {"model": name, "prompt": PROMPT, "width": mode.size}
                    body |= {"height": mode.size, "steps": mode.steps, "seed": 1}
                    started = time.perf_counter()
                    job = client.post(
                        "/v1/generate", json=body, headers={"Prefer": f"wait={MAX_WAIT_S}"}
                    ).json()
                    while job.get("status") not in TERMINAL and time.monotonic() < deadline:
                        time.sleep(0.05)
                        job = client.get(f"/v1/jobs/{job['id']}").json()
                    if job.get("status") != "succeeded":
                        raise RuntimeError(f"{kind} job: {job.get('status')} {job.get('error')}")
                    client.get(f"/v1/jobs/{job['id']}/images/0").raise_for_status()
                    times.append(time.perf_counter() - started)
                    inference.append(job["timings"]["inference"])
                results[kind] = {"times_s": times, "best_s": min(times), "inference_s": inference}
    except (RuntimeError, httpx.HTTPError) as exc:
        results["error"] = str(exc)
    finally:
        stack.stop()
    return results


# --- models ---


def build_models(mode: Mode, cache: Path) -> dict[str, Path]:
    """The folders benchmarked: the tiny model, or SD3 Medium and SD3.5 Large (each with T5,
    and Large also without), built once into `cache`."""
    if mode.tiny:
        from worker.tiny_model import build

        folder = cache / "tiny"
        if not (folder / "model_index.json").is_file():
            build(folder)
        return {"tiny": folder}
    import torch

    from worker import real_model

    folders = {}
    for arch in ("sd3-medium", "sd3.5-large"):
        folder = cache / arch
        if not (folder / "model_index.json").is_file():
            started = time.perf_counter()
            # Random weights drawn on the GPU: seconds, where a CPU takes minutes for 8 B.
            with torch.device("cuda"):
                real_model.build(arch, folder, t5=True)
            print(f"built {arch} in {time.perf_counter() - started:.0f} s", flush=True)
        folders[arch] = folder
    return folders


# --- the whole run ---


class Report:
    """The results so far, written to DIR/gpu.json and DIR/gpu.md after every phase."""

    def __init__(self, out: Path, mode: Mode) -> None:
        self.out = out
        self.data: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "mode": "tiny (CPU)" if mode.tiny else "gpu",
            "size": mode.size,
            "steps": mode.steps,
            "dtype": mode.dtype,
            "compile_backend": mode.compile_backend,
            "results": {},
        }
        out.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()

    def add(self, key: str, value: dict[str, Any]) -> None:
        self.data["results"][key] = value
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:4.0f} s] {key}: {_summary(value)}", flush=True)
        (self.out / "gpu.json").write_text(json.dumps(self.data, indent=2) + "\n")
        (self.out / "gpu.md").write_text(markdown(self.data))


def _summary(value: dict[str, Any]) -> str:
    if "error" in value:
        verdict = "does not fit: " if value.get("fits") is False else ""
        return f"{verdict}error: {value['error']}"
    if "skipped" in value:
        return f"skipped: {value['skipped']}"
    parts = [f"best {value['best_s']:.3f} s"] if "best_s" in value else []
    if "peak_allocated_gib" in value:
        parts.append(f"peak {value['peak_allocated_gib']:.2f} GiB")
    if "fits" in value:
        parts.append("fits" if value["fits"] else "does not fit")
    return ", ".join(parts) or json.dumps(value)


def _cell(value: dict[str, Any] | None, field: str, fmt: str = "{:.3f}") -> str:
    if not value:
        return "—"
    if "error" in value:
        return "error"
    if "skipped" in value:
        return "skipped"
    return fmt.format(value[field]) if field in value else "—"


def markdown(data: dict[str, Any]) -> str:
    res: dict[str, Any] = data["results"]
    lines = [
        f"GPU benchmark, {data['date']}, {data['mode']}: {data['size']}², {data['steps']} "
        f"steps, {data['dtype']}, torch.compile backend {data['compile_backend']}.",
        "",
        "| model | run | best s | peak allocated GiB | compiled/eager | served/direct |",
        "|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(k.split("/")[0] for k in res):
        eager, compiled = res.get(f"{model}/direct eager"), res.get(f"{model}/direct compiled")
        served_runs = res.get(f"{model}/served") or {}
        rows = [
            ("direct eager", eager, eager),
            ("direct compiled", compiled, compiled),
            ("served eager", served_runs.get("eager"), eager),
            ("served compiled", served_runs.get("compiled"), compiled),
        ]
        for run, value, direct_value in rows:
            if value is None and not served_runs.get("error"):
                continue
            ratio_c = _ratio(compiled, eager) if run == "direct compiled" else "—"
            ratio_s = _ratio(value, direct_value) if run.startswith("served") else "—"
            shown = value if value is not None else {"error": served_runs.get("error")}
            peak = _cell(value, "peak_allocated_gib", "{:.2f}")
            lines.append(
                f"| {model} | {run} | {_cell(shown, 'best_s')} | {peak} | {ratio_c} | {ratio_s} |"
            )
    fits = {k: v for k, v in res.items() if k.split("/")[1].startswith("fit")}
    if fits:
        lines += ["", f"| fit in {FIT_GIB:g} GiB | fits | peak allocated GiB | best s |"]
        lines.append("|---|---|---|---|")
        for key, value in fits.items():
            # An out-of-memory run records its error and fits=False: the answer is "no".
            if "fits" in value:
                fit = "yes" if value["fits"] else "no"
            else:
                fit = "error" if "error" in value else "no"
            if "skipped" in value:
                fit = f"skipped: {value['skipped']}"
            peak = _cell(value, "peak_allocated_gib", "{:.2f}")
            lines.append(f"| {key} | {fit} | {peak} | {_cell(value, 'best_s')} |")
    lines += ["", "Anchors (SD3 Medium, 1024², 28 steps): "]
    lines[-1] += ", ".join(f"{name} {s} s" for name, s in ANCHORS.items()) + "."
    return "\n".join(lines) + "\n"


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if not a or not b or "best_s" not in a or "best_s" not in b:
        return "—"
    return f"{a['best_s'] / b['best_s']:.2f}"


def main_run(args: argparse.Namespace) -> int:
    mode = TINY if args.tiny else GPU
    deadline = time.monotonic() + float(args.budget_s)
    report = Report(args.out, mode)

    def left() -> float:
        return deadline - time.monotonic()

    if not mode.tiny:
        import torch

        if not torch.cuda.is_available():
            print("bench/gpu.sh: no CUDA device here; --tiny runs on a CPU", file=sys.stderr)
            return 2
        report.data["gpu"] = torch.cuda.get_device_name(0)
        report.data["torch"] = torch.__version__
    cache = args.cache
    folders = build_models(mode, cache)
    print(f"models ready, {left():.0f} s of the budget left", flush=True)

    def measure(key: str, model: Path, **options: Any) -> dict[str, Any]:
        if left() < 10:
            value = {"skipped": "out of time"}
        else:
            value = run_direct(mode, model, left(), **options)
        report.add(key, value)
        return value

    # In order of importance, so that a short budget drops the least needed.
    first = "tiny" if mode.tiny else "sd3-medium"
    measure(f"{first}/direct eager", folders[first])
    measure(f"{first}/direct compiled", folders[first], compile=True)
    with tempfile.TemporaryDirectory(prefix="sd3serve-gpu-") as work:
        value: dict[str, Any] = (
            served(mode, folders[first], Path(work), left())
            if left() > 30
            else {"skipped": "out of time"}
        )
        report.add(f"{first}/served", value)
    if mode.tiny:
        for key in ("fit, T5 dropped", "fit, T5 offloaded"):
            report.add(f"tiny/{key}", {"skipped": "needs CUDA"})
    else:
        large = folders["sd3.5-large"]
        for key, options in (
            ("fit, T5 dropped", {"drop_t5": True}),
            ("fit, T5 offloaded", {"cpu_offload": "model"}),
        ):
            value = measure(f"sd3.5-large/{key}", large, cap_gib=FIT_GIB, **options)
            if "error" in value and "out of memory" in value["error"].lower():
                value["fits"] = False
            elif "best_s" in value:
                value["fits"] = True
            report.add(f"sd3.5-large/{key}", value)
        measure("sd3.5-large/direct eager", large)
        measure("sd3.5-large/direct compiled", large, compile=True)
    print(f"\n{markdown(report.data)}\nwritten to {args.out}/gpu.json and gpu.md")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="the whole benchmark (the default)")
    run.add_argument("--tiny", action="store_true", help="the tiny model on a CPU, in seconds")
    run.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-results"))
    run.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "sd3serve-gpu")
    run.add_argument("--budget-s", type=float, default=540.0, help="stop starting phases after")
    one = sub.add_parser("direct", help="one measurement (run by `run`, each in its own process)")
    one.add_argument("--model", required=True)
    one.add_argument("--device", required=True)
    one.add_argument("--dtype", required=True)
    one.add_argument("--size", type=int, required=True)
    one.add_argument("--steps", type=int, required=True)
    one.add_argument("--repeats", type=int, required=True)
    one.add_argument("--compile", action="store_true")
    one.add_argument("--compile-backend", default="inductor")
    one.add_argument("--drop-t5", action="store_true")
    one.add_argument("--cpu-offload", default="none")
    one.add_argument("--cap-gib", type=float, help="let torch allocate at most this much")
    one.add_argument("--result", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("run", "direct", "-h", "--help"):
        argv = ["run", *argv]
    args = parser().parse_args(argv)
    if args.command == "direct":
        args.result.write_text(json.dumps(direct(args)))
        return 0
    return main_run(args)


if __name__ == "__main__":
    raise SystemExit(main())
