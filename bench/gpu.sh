#!/usr/bin/env bash
# The GPU benchmark (docs/performance.md): SD3 Medium and SD3.5 Large, real architectures with
# random weights, 1024², 28 steps, bfloat16; eager against compiled, direct against served,
# peak memory, and SD3.5 Large in 24 GiB. Under 10 minutes on one H100/H200; offline.
#
#   bench/gpu.sh prepare [DIR]     here, online: wheels and redis-server the GPU machine lacks,
#                                  into DIR (default .gpu-carry, kept out of git)
#   bench/gpu.sh [--out DIR] [--budget-s S]     on the GPU machine (results: $OUT or DIR)
#   bench/gpu.sh --tiny [--out DIR]             the same runs, tiny model, CPU, in seconds
#
# Python: $PYTHON, else .venv/bin/python, else python3. What it cannot import (diffusers,
# pydantic, rq, fastapi, ...) comes from the wheels in .gpu-carry, installed without a network
# into a folder of their own; redis-server likewise, when none is on PATH.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
carry="${SD3SERVE_GPU_CARRY:-$repo/.gpu-carry}"

# Packages of the project's API and worker that a CUDA image with torch, transformers and
# accelerate (the GPU machine's) does not have. Versions are the ones installed here.
CARRIED=(diffusers importlib-metadata zipp pydantic pydantic-core annotated-types
    typing-inspection pydantic-settings python-dotenv redis rq croniter fastapi starlette
    annotated-doc opentelemetry-api uvicorn h11 httpx-sse standardwebhooks limits deprecated
    wrapt boto3 botocore jmespath s3transfer python-dateutil isal)

prepare() {
    local dir="${1:-$carry}" python="${PYTHON:-$repo/.venv/bin/python}" specs=()
    mkdir -p "$dir/wheels" "$dir/redis"
    for name in "${CARRIED[@]}"; do
        specs+=("$name==$("$python" -c 'import sys; from importlib.metadata import version
print(version(sys.argv[1]))' "$name")")
    done
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$dir/wheels" "${specs[@]}"
    # redis-server and the libraries it links beyond glibc and the C++ runtime, behind a wrapper
    # that shows them to redis-server alone (torch must keep the machine's own).
    local server
    server="$(command -v redis-server)"
    mkdir -p "$dir/redis/lib"
    cp "$server" "$dir/redis/redis-server.bin"
    ldd "$server" | awk '/=> \// {print $3}' |
        grep -Ev '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' |
        while read -r lib; do cp -L "$lib" "$dir/redis/lib/"; done
    # shellcheck disable=SC2016 # expanded when the wrapper runs
    printf '%s\n' '#!/bin/sh' 'here="$(dirname "$0")"' \
        'LD_LIBRARY_PATH="$here/lib" exec "$here/redis-server.bin" "$@"' >"$dir/redis/redis-server"
    chmod +x "$dir/redis/redis-server"
    if [[ $dir == "$repo"/* ]] && [ -d "$repo/.git" ] && ! grep -qx "/${dir#"$repo"/}/" "$repo/.git/info/exclude" 2>/dev/null; then
        echo "/${dir#"$repo"/}/" >>"$repo/.git/info/exclude"
    fi
    du -sh "$dir"
    echo "carry it: run(command='bench/gpu.sh', carry=['${dir#"$repo"/}'])"
}

if [ "${1:-}" = prepare ]; then
    shift
    prepare "$@"
    exit 0
fi

if [ -n "${PYTHON:-}" ]; then
    python="$PYTHON"
elif [ -x "$repo/.venv/bin/python" ]; then
    python="$repo/.venv/bin/python"
else
    python=python3
fi
if [ -d "$carry/wheels" ] && ! "$python" -c "import diffusers, pydantic_settings, rq, fastapi" 2>/dev/null; then
    site="${TMPDIR:-/tmp}/sd3serve-gpu-site"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "$carry"/wheels/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! command -v redis-server >/dev/null && [ -x "$carry/redis/redis-server" ]; then
    export PATH="$carry/redis:$PATH"
fi
if ! missing="$("$python" -c 'import diffusers, pydantic_settings, rq, fastapi, uvicorn, httpx, isal' 2>&1)"; then
    echo "bench/gpu.sh: $python lacks packages (run 'bench/gpu.sh prepare' where pip works): $missing" >&2
    exit 2
fi
# The repo's packages, then no hub: the models are built here, from configs in the repo.
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONUNBUFFERED=1
cd "$repo"
exec "$python" bench/gpu.py run "$@"
