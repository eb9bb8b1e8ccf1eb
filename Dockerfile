# kernel-lab's images: klab (the CLI and the Python API), the Celery worker and the migrations.
#   docker build --target cpu -t kernel-lab:cpu .   the default: small, CPU build of torch
#   docker build --target gpu -t kernel-lab:gpu .   the gpu worker, on PyTorch's CUDA image
# docker compose builds both (docker-compose.yml).
#
# The cpu stages come first and use nothing of the gpu ones: the legacy builder (docker-compose 1.29, docker
# without buildx) builds every stage up to its target, so the cpu image never waits on PyTorch's multi-GB CUDA
# image. The last stage is the cpu image again, for a plain `docker build .` with BuildKit.
#
# Both images install the dependencies and the `klab` script from pyproject.toml alone into a venv, in a stage
# of their own that is thrown away (its /build, egg-info included), then copy the venv and the code (to /app,
# imported from there: PYTHONPATH): editing the code rebuilds in seconds, without reinstalling torch.
# README.md is only the package's long description, so an empty one stands in for it and README edits do not
# reinstall either. Matplotlib writes its cache to /tmp: `docker compose run --user UID:GID` has no home.

# --- builder: a venv with every dependency, torch's CPU wheel included -----------------------
FROM python:3.11.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY pyproject.toml constraints.txt ./
# torch==2.13.0 (constraints.txt) resolves to 2.13.0+cpu from PyTorch's index: no CUDA libraries.
RUN touch README.md && pip install --extra-index-url https://download.pytorch.org/whl/cpu -c constraints.txt .

# --- cpu: the default image, the venv and the code on a bare Python --------------------------
FROM python:3.11.11-slim-bookworm AS cpu
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib
RUN useradd --create-home --uid 10001 klab
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY migrations/ migrations/
COPY klab/ klab/
COPY service/ service/
COPY worker/ worker/
USER klab
CMD ["klab", "--help"]

# --- gpu-builder: a venv over the CUDA image's Python ---------------------------------------
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime AS gpu-builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The base image's Python holds its CUDA torch; the venv sees it (it satisfies torch==2.13.0) and adds the rest.
RUN python -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY pyproject.toml constraints.txt ./
RUN touch README.md && pip install -c constraints.txt .

# --- gpu: the gpu worker, the venv and the code on PyTorch's CUDA image -----------------------
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime AS gpu
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1 MPLCONFIGDIR=/tmp/matplotlib
RUN useradd --create-home --uid 10001 klab
COPY --from=gpu-builder /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY migrations/ migrations/
COPY klab/ klab/
COPY service/ service/
COPY worker/ worker/
USER klab
CMD ["klab", "--help"]

# --- the default: `docker build .` gives the cpu image (with BuildKit, which builds only what it needs) ----
FROM cpu
