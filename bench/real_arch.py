"""A public checkpoint's architecture served on this machine: load time, memory, time per step.

Builds the architecture once with random bfloat16 weights and without T5 (`sd3-serve build-model
--arch ARCH --random --no-t5`, cached in --cache), starts a private stack (redis-server, the API,
one worker on the folder) and runs one job through it, then reads the worker's own metrics and
its peak resident memory. Then decodes one --vae-side² latent with the architecture's VAE,
untiled and in --vae-tile² tiles (as SD3SERVE_VAE_TILE_ABOVE=tile² would), each in a fresh
process, and prints each decode's time and memory.

    .venv/bin/python bench/real_arch.py [--cache /tmp/sd3serve-real-arch] [--arch sd3-medium]
        [--size 256] [--steps 2] [--dtype bfloat16] [--vae-side 1024] [--vae-tile 512]

The worker's dtype defaults to bfloat16, the weights' own: float32 would double the memory (about
12 GB for SD3 Medium's transformer and CLIPs), though on a CPU without native bfloat16 it is
the faster one (what SD3SERVE_TORCH_DTYPE=auto picks there; printed): without native bfloat16,
torch's bfloat16 convolutions are some 90 times slower than float32 ones, and the job's VAE
decode takes most of its time. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import torch
from diffusers import AutoencoderKL
from prometheus_client.parser import text_string_to_metric_families

from common.settings import env_var
from service.dev import Stack, free_port, start_api, start_redis, start_worker, wait_until
from worker import real_model
from worker.pipeline import choose_dtype, set_vae_tile

GIB = 2**30
TERMINAL = {"succeeded", "failed", "canceled"}


def status_kib(pid: int | str, field: str) -> int:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def samples(metrics_url: str) -> dict[str, float]:
    """name{labels} -> value of every sample the worker exports."""
    text = httpx.get(metrics_url, timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def one(found: dict[str, float], prefix: str) -> float:
    """The one sample whose key starts with `prefix`."""
    (value,) = [v for k, v in found.items() if k.startswith(prefix)]
    return value


def serve_one_job(args: argparse.Namespace, model: Path, work: Path) -> None:
    env = dict(os.environ) | {
        env_var("model"): str(model),
        env_var("torch_device"): "cpu",
        env_var("torch_dtype"): args.dtype,
        env_var("warmup"): "false",  # the job below is the first call; its steps say enough
        env_var("result_store"): f"file://{work / 'results'}",
        # One CPU step can take minutes: neither RQ nor a reaper may take the job for stuck.
        env_var("job_timeout_s"): "21600",
        env_var("worker_lost_after_s"): "600",
    }
    stack = Stack()
    try:
        env[env_var("redis_url")] = start_redis(stack, work, env)
        started = time.perf_counter()
        worker, metrics_url = start_worker(stack, env, "bench-worker")
        url = start_api(stack, env, "127.0.0.1", free_port())
        client = httpx.Client(base_url=url, timeout=60)
        wait_until(lambda: client.get("/readyz").json()["workers"] >= 1, stack, "the worker", 1800)
        ready_s = time.perf_counter() - started
        load_hwm = status_kib(worker.pid, "VmHWM")
        body = {"prompt": "a lighthouse on a cliff at dusk", "width": args.size}
        body |= {"height": args.size, "steps": args.steps, "seed": 1}
        reply = client.post("/v1/generate", json=body)
        reply.raise_for_status()
        job_id = reply.json()["id"]
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in TERMINAL:
            wait_until(lambda: True, stack, "the job", 1)  # raises if a process died
            time.sleep(2)
        found = samples(metrics_url + "/metrics")
        job_hwm = status_kib(worker.pid, "VmHWM")
        client.close()
    finally:
        stack.stop()

    if job["status"] != "succeeded":
        raise SystemExit(f"job {job['status']}: {job.get('error')}")
    load_s = one(found, "sd3serve_model_load_seconds{")
    step_sum = one(found, "sd3serve_step_seconds_sum{")
    step_count = one(found, "sd3serve_step_seconds_count{")
    print(f"worker ({args.arch}, bfloat16 weights, no T5, {args.dtype} compute, cpu):")
    print(f"  model load (sd3serve_model_load_seconds): {load_s:.1f} s")
    print(f"  process start to ready:                    {ready_s:.1f} s")
    print(f"  peak RSS after load:                       {load_hwm / 2**20:.2f} GiB")
    print(f"  peak RSS after the job:                    {job_hwm / 2**20:.2f} GiB")
    guidance = job["params"]["guidance_scale"]
    print(f"job: {args.size}x{args.size}, {args.steps} steps, guidance {guidance}")
    print(f"  prompt encoding:  {one(found, 'sd3serve_prompt_encode_seconds_sum{'):.1f} s")
    print(f"  time per step:    {step_sum / step_count:.1f} s ({step_count:.0f} steps)")
    print(f"  inference (call): {job['timings']['inference']:.1f} s")


def _decode(
    vae_dir: str, dtype: str, side: int, tile: int, conn: multiprocessing.connection.Connection
) -> None:
    vae = AutoencoderKL.from_pretrained(vae_dir, dtype=getattr(torch, dtype)).eval()
    if tile:
        set_vae_tile(vae, tile * tile)
        vae.enable_tiling()
    generator = torch.Generator(device="cpu").manual_seed(0)
    latent_side = side // 2 ** (len(vae.config.block_out_channels) - 1)
    latents = torch.randn(
        (1, vae.config.latent_channels, latent_side, latent_side),
        generator=generator,
        dtype=getattr(torch, dtype),
    )
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on
    before = status_kib("self", "VmRSS")
    started = time.perf_counter()
    with torch.inference_mode():
        image = vae.decode(latents).sample
    seconds = time.perf_counter() - started
    assert image.shape[-1] == side
    conn.send((seconds, before, status_kib("self", "VmHWM")))


def decode_vae(args: argparse.Namespace, model: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    print(f"VAE decode of one {args.vae_side}² image ({args.vae_dtype}, cpu):")
    for tile in (0, args.vae_tile):
        receive, send = spawn.Pipe(duplex=False)
        child = spawn.Process(
            target=_decode,
            args=(str(model / "vae"), args.vae_dtype, args.vae_side, tile, send),
        )
        child.start()
        seconds, before, peak = receive.recv()
        child.join()
        what = f"tiled, {tile}² tiles" if tile else "untiled"
        print(
            f"  {what:>18}: {seconds:6.1f} s, peak RSS {peak / 2**20:.2f} GiB "
            f"(+{(peak - before) / 2**20:.2f} GiB over the loaded VAE)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/sd3serve-real-arch"))
    parser.add_argument("--arch", default="sd3-medium")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--vae-side", type=int, default=1024)
    parser.add_argument("--vae-tile", type=int, default=512)
    parser.add_argument("--vae-dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--skip-job", action="store_true", help="the VAE decodes only")
    args = parser.parse_args()

    cpu = torch.device("cpu")
    print(f"SD3SERVE_TORCH_DTYPE=auto here: {choose_dtype('auto', cpu)}")
    model = args.cache / f"{args.arch}-no-t5"
    if not (model / "model_index.json").is_file():
        started = time.perf_counter()
        real_model.build(args.arch, model, t5=False)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"built {model} in {time.perf_counter() - started:.0f} s, peak RSS {peak:.2f} GiB")
    size = sum(f.stat().st_size for f in model.rglob("*") if f.is_file())
    print(f"model folder: {model} ({size / GIB:.2f} GiB)")

    if not args.skip_job:
        work = Path(tempfile.mkdtemp(prefix="sd3serve-bench-"))
        try:
            serve_one_job(args, model, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    decode_vae(args, model)


if __name__ == "__main__":
    main()
