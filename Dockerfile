# kernel-lab's images: klab, the Celery worker and the migrations.
#   docker build -t kernel-lab:cpu .               the default: small, CPU build of torch
#   docker build --target gpu -t kernel-lab:gpu .  the gpu worker, on PyTorch's CUDA image
# docker compose builds both (docker-compose.yml).
#
# Both images install the dependencies and the `klab` script from pyproject.toml alone, then copy
# the code to /app and import it from there (PYTHONPATH): editing the code rebuilds in seconds,
# without reinstalling torch. README.md is only the package's long description, so an empty one
# stands in for it and README edits do not reinstall either.

# --- builder: a venv with every dependency, torch's CPU wheel included -----------------------
FROM python:3.11.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
COPY pyproject.toml constraints.txt ./
# torch==2.13.0 (constraints.txt) resolves to 2.13.0+cpu from PyTorch's index: no CUDA libraries.
RUN touch README.md && pip install --extra-index-url https://download.pytorch.org/whl/cpu -c constraints.txt .

# --- gpu: the gpu worker, on the CUDA build of the same torch ---------------------------------
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime AS gpu
# The base image's Python holds its CUDA torch; install beside it (it satisfies torch==2.13.0).
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONPATH=/app PYTHONUNBUFFERED=1
WORKDIR /build
COPY pyproject.toml constraints.txt ./
RUN touch README.md && pip install -c constraints.txt .
RUN useradd --create-home --uid 10001 klab
WORKDIR /app
COPY alembic.ini ./
COPY migrations/ migrations/
COPY service/ service/
COPY worker/ worker/
USER klab
CMD ["klab", "--help"]

# --- cpu: the default image, the venv and the code on a bare Python --------------------------
FROM python:3.11.11-slim-bookworm AS cpu
ENV PATH=/opt/venv/bin:$PATH PYTHONPATH=/app PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 klab
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY migrations/ migrations/
COPY service/ service/
COPY worker/ worker/
USER klab
CMD ["klab", "--help"]
