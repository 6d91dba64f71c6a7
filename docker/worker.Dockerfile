# syntax=docker/dockerfile:1
# The worker: `sd3-serve worker`, one warm StableDiffusion3Pipeline per container.
#
#   docker build -f docker/worker.Dockerfile -t sd3-serve-worker .               (CUDA, the default)
#   docker build -f docker/worker.Dockerfile --target cpu -t sd3-serve-worker:cpu .  (any laptop)
#
# Run from the repository root (the build context; see .dockerignore). The `cpu` target serves
# the bundled model (package data of `worker`) with no GPU and no download; the `cuda` target
# serves a checkpoint mounted at /models (SD3SERVE_MODEL=/models/<folder>).

ARG TORCH_VERSION=2.13.0
# The CUDA build of torch. It brings its own CUDA libraries (cuDNN included) as wheels; the base
# image below supplies the rest of the CUDA user space and the NVIDIA container settings. Keep
# the two on the same CUDA line, e.g. cu130 with nvidia/cuda:13.0.x for Blackwell GPUs.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126

# ---- cpu: python slim, CPU torch ---------------------------------------------------------

FROM python:3.11.15-slim-bookworm AS cpu-build
ARG TORCH_VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir \
        --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md /src/
COPY common /src/common
COPY service /src/service
COPY worker /src/worker
RUN /opt/venv/bin/pip install --no-cache-dir "/src[worker]"

FROM python:3.11.15-slim-bookworm AS cpu
# The same uid as the API's image, so both may write the shared `results` volume.
RUN groupadd --gid 10001 sd3serve \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --shell /usr/sbin/nologin sd3serve \
    && mkdir -p /results /cache/huggingface /models \
    && chown sd3serve:sd3serve /results /cache/huggingface
COPY --from=cpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/cache/huggingface \
    SD3SERVE_RESULT_STORE=file:///results
VOLUME ["/cache/huggingface"]
WORKDIR /app
USER 10001:10001
EXPOSE 9400
# /healthz of the worker's metrics server, on SD3SERVE_METRICS_PORT (9400 unless set).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SD3SERVE_METRICS_PORT', '9400'), timeout=4)"]
CMD ["sd3-serve", "worker"]

# ---- cuda (the default target): NVIDIA CUDA runtime, CUDA torch ----------------------------

FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04 AS cuda-base
# Ubuntu 24.04's Python 3.12 (the project needs 3.11+), and venv for the build stage.
# DL3008 (pin apt package versions) is ignored on purpose: Ubuntu's archive keeps only the
# current version of a package, which every security update replaces, so a pinned version
# stops installing within weeks; the base image's tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM cuda-base AS cuda-build
ARG TORCH_VERSION
ARG TORCH_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir \
        --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md /src/
COPY common /src/common
COPY service /src/service
COPY worker /src/worker
RUN /opt/venv/bin/pip install --no-cache-dir "/src[worker]"

FROM cuda-base AS cuda
RUN groupadd --gid 10001 sd3serve \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --shell /usr/sbin/nologin sd3serve \
    && mkdir -p /results /cache/huggingface /models \
    && chown sd3serve:sd3serve /results /cache/huggingface
COPY --from=cuda-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/cache/huggingface \
    SD3SERVE_RESULT_STORE=file:///results
# Checkpoints are mounted read-only at /models; downloads (a hub id) land in the cache volume.
VOLUME ["/cache/huggingface"]
WORKDIR /app
USER 10001:10001
EXPOSE 9400
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SD3SERVE_METRICS_PORT', '9400'), timeout=4)"]
CMD ["sd3-serve", "worker"]
