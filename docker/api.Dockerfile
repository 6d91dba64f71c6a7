# syntax=docker/dockerfile:1
# The API: `sd3-serve api`, FastAPI under uvicorn. No torch, no diffusers: the `api` extra only.
#
#   docker build -f docker/api.Dockerfile -t sd3-serve-api .     (from the repository root)
#
# Settings come from the environment (README "Settings"); SD3SERVE_API_WORKERS sets the number
# of uvicorn processes.

FROM python:3.11.15-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
# Only what `pip install .[api]` needs: the metadata and the two packages the API imports.
COPY pyproject.toml README.md /src/
COPY common /src/common
COPY service /src/service
RUN /opt/venv/bin/pip install --no-cache-dir "/src[api]"

FROM python:3.11.15-slim-bookworm AS api
# One uid for every sd3-serve image, so the API and the workers share the `results` volume.
RUN groupadd --gid 10001 sd3serve \
    && useradd --uid 10001 --gid 10001 --no-log-init --create-home --shell /usr/sbin/nologin sd3serve \
    && mkdir -p /results \
    && chown sd3serve:sd3serve /results
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SD3SERVE_RESULT_STORE=file:///results
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# No curl in the slim image: Python asks /healthz (urlopen raises, so exits 1, on anything but 2xx).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["sd3-serve", "api", "--host", "0.0.0.0", "--port", "8000"]
