# syntax=docker/dockerfile:1.7
# moe-runtime (CPU): the torch engine's Ray worker/head image for CPU pools and for every torch-engine Ray head.
# Ray's own image (same Ray version as the operator renders: moe_operator.render.images.Images.ray_version)
# plus CPU-only torch and this project's moe_runtime package.
#
# Build from the repository root:
#   docker build -f images/runtime-cpu.Dockerfile -t ghcr.io/moe-operator/runtime:0.1.0-cpu .
ARG RAY_VERSION=2.49.1
ARG RAY_IMAGE=docker.io/rayproject/ray:${RAY_VERSION}-py311-cpu
FROM ${RAY_IMAGE}
ARG RAY_VERSION=2.49.1
ARG TORCH_VERSION=2.8.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The Ray image runs as user "ray" (UID 1000, group users 100) with its Python in /home/ray/anaconda3.
COPY --chown=1000:100 pyproject.toml README.md /home/ray/moe/
COPY --chown=1000:100 operator/ /home/ray/moe/operator/
COPY --chown=1000:100 runtime/ /home/ray/moe/runtime/
# Ray stays at the image's version (a constraint, never an upgrade); torch comes from PyTorch's CPU wheel index.
RUN echo "ray==${RAY_VERSION}" > /tmp/constraints.txt \
 && echo "torch==${TORCH_VERSION}" >> /tmp/constraints.txt \
 && pip install --constraint /tmp/constraints.txt --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" \
 && pip install --constraint /tmp/constraints.txt "/home/ray/moe[runtime]" \
 && python -c "import moe_runtime.serve_app, torch, ray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__" \
 && rm /tmp/constraints.txt
