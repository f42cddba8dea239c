# syntax=docker/dockerfile:1.7
# moe-runtime (Ascend): the torch engine's Ray worker image for Ascend 910B/910C pools. Huawei's CANN base image
# (toolkit + kernels for 910B, Ubuntu 22.04, Python 3.11; tags <cann>-<chip>-<os>-<py>) plus torch, torch_npu of
# the release matching that CANN, Ray Serve at the operator's Ray version, and this project's moe_runtime package.
# The NPU driver comes from the node (the MindCluster/HAMi device plugin mounts it).
#
# Build from the repository root (amd64 or arm64; Ascend servers are usually arm64):
#   docker build -f images/runtime-cann.Dockerfile -t ghcr.io/moe-operator/runtime:0.1.0-cann .
ARG CANN_IMAGE=quay.io/ascend/cann:8.2.rc1-910b-ubuntu22.04-py3.11
FROM ${CANN_IMAGE}
ARG RAY_VERSION=2.49.1
# torch_npu releases follow torch's version; 2.7.1 is the one built against CANN 8.2.RC1.
ARG TORCH_VERSION=2.7.1
ARG TORCH_NPU_VERSION=2.7.1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# KubeRay probes the raylet with wget; run as a non-root "ray" user (UID 1000) like Ray's own images.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --gid 100 --create-home ray \
 && echo 'source /usr/local/Ascend/ascend-toolkit/set_env.sh' > /etc/profile.d/ascend-toolkit.sh
COPY --chown=1000:100 pyproject.toml README.md /home/ray/moe/
COPY --chown=1000:100 operator/ /home/ray/moe/operator/
COPY --chown=1000:100 runtime/ /home/ray/moe/runtime/
RUN printf 'ray==%s\ntorch==%s\ntorch-npu==%s\n' "${RAY_VERSION}" "${TORCH_VERSION}" "${TORCH_NPU_VERSION}" > /tmp/constraints.txt \
 && pip install --constraint /tmp/constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu \
      "torch==${TORCH_VERSION}" "torch-npu==${TORCH_NPU_VERSION}" "ray[serve]==${RAY_VERSION}" \
 && pip install --constraint /tmp/constraints.txt "/home/ray/moe[runtime]" \
 && python -c "import moe_runtime.serve_app, torch, ray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__" \
 && rm /tmp/constraints.txt
# KubeRay starts Ray with `bash -lc`, which reads /etc/profile.d/ascend-toolkit.sh (CANN's environment).
USER 1000
WORKDIR /home/ray
