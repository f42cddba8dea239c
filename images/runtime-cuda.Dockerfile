# syntax=docker/dockerfile:1.7
# moe-runtime (CUDA): the torch engine's Ray worker image for NVIDIA pools. Ray's CUDA 12.8 image (driver >= 570
# on the node) plus the matching CUDA build of torch and this project's moe_runtime package.
#
# Build from the repository root:
#   docker build -f images/runtime-cuda.Dockerfile -t ghcr.io/moe-operator/runtime:0.1.0-cuda .
ARG RAY_VERSION=2.49.1
ARG RAY_IMAGE=docker.io/rayproject/ray:${RAY_VERSION}-py311-cu128
FROM ${RAY_IMAGE}
ARG RAY_VERSION=2.49.1
ARG TORCH_VERSION=2.8.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --chown=1000:100 pyproject.toml README.md /home/ray/moe/
COPY --chown=1000:100 operator/ /home/ray/moe/operator/
COPY --chown=1000:100 runtime/ /home/ray/moe/runtime/
RUN echo "ray==${RAY_VERSION}" > /tmp/constraints.txt \
 && echo "torch==${TORCH_VERSION}" >> /tmp/constraints.txt \
 && pip install --constraint /tmp/constraints.txt --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
 && pip install --constraint /tmp/constraints.txt "/home/ray/moe[runtime]" \
 && python -c "import moe_runtime.serve_app, torch, ray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__" \
 && rm /tmp/constraints.txt
