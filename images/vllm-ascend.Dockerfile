# syntax=docker/dockerfile:1.7
# vllm-ascend + Ray Serve LLM: the vLLM engine's Ray worker image for Ascend 910B pools (Images.vllm_huawei).
# Upstream vllm-ascend images ship vLLM, torch_npu and CANN for Ascend but an older Ray (their Dockerfile
# installs 'ray>=2.47.1,<=2.48.0') that has neither LLMConfig.placement_group_config nor build_dp_openai_app.
# A Ray cluster needs one Ray version and one Python minor on every node: the vLLM head is
# rayproject/ray-llm:<RAY_VERSION>-py312-cu130 (Python 3.12), so this image adds Ray Serve LLM at exactly that
# Ray version on a vllm-ascend base that already runs Python 3.12 and the vLLM release that Ray version pins
# (ray[llm]==2.58.0 requires vllm==0.26.0). The build fails when the base's Python minor or vLLM differ.
# The NPU driver comes from the node (the MindCluster/HAMi device plugin mounts it).
#
# Build from the repository root (the context is empty: this image copies nothing; arm64 for Kunpeng hosts):
#   docker build -f images/vllm-ascend.Dockerfile -t ghcr.io/moe-operator/vllm-ascend:0.1.0 .
ARG VLLM_ASCEND_IMAGE=quay.io/ascend/vllm-ascend:v0.26.0rc1
FROM ${VLLM_ASCEND_IMAGE}
ARG RAY_VERSION=2.58.0
# The ray-llm head's Python minor, and the vLLM release ray[llm]==RAY_VERSION pins: change all three together.
ARG PYTHON_MINOR=3.12
ARG VLLM_VERSION=0.26.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Refuse a base that cannot join the head's cluster or that ray[llm] would have to replace vLLM in.
RUN python3 -c "import sys, importlib.metadata as m; py = '%d.%d' % sys.version_info[:2]; v = m.version('vllm'); \
assert py == '${PYTHON_MINOR}', f'base Python {py}; the ray-llm head runs ${PYTHON_MINOR}'; \
assert v.split('+')[0] == '${VLLM_VERSION}', f'base vLLM {v}; ray[llm]==${RAY_VERSION} pins vllm==${VLLM_VERSION}'" \
 && command -v wget
# The base's Ascend stack is frozen by constraints (name==installed version), so installing ray[serve,llm]
# adds Ray and its Serve/LLM dependencies and never swaps vLLM, vllm-ascend or torch for CUDA wheels.
# (ray[llm] also brings nixl's CUDA wheels, unused on Ascend.) The API check reads Ray's source instead of
# importing ray.serve.llm, which imports vLLM and its Ascend platform plugin: that needs the NPU driver,
# which a build host lacks.
RUN python3 -c "import importlib.metadata as m; \
keep = {'vllm', 'vllm-ascend', 'torch', 'torch-npu', 'torchvision', 'torchaudio', 'triton-ascend', 'transformers'}; \
key = lambda d: (d.metadata['Name'] or '').lower().replace('_', '-'); \
pins = {key(d): d.version for d in m.distributions() if key(d) in keep}; \
open('/tmp/constraints.txt', 'w').write(''.join(f'{k}=={v}\\n' for k, v in sorted(pins.items())) + 'ray==${RAY_VERSION}\\n')" \
 && cat /tmp/constraints.txt \
 && python3 -m pip install --constraint /tmp/constraints.txt "ray[serve,llm]==${RAY_VERSION}" \
 && python3 -c "import ray; assert ray.__version__ == '${RAY_VERSION}', ray.__version__" \
 && RAY_DIR="$(python3 -c 'import os, ray; print(os.path.dirname(ray.__file__))')" \
 && grep -q "def build_dp_openai_app" "${RAY_DIR}/serve/llm/__init__.py" \
 && grep -rq "placement_group_config" "${RAY_DIR}/llm/_internal/serve/core/configs/llm_config.py" \
 && rm /tmp/constraints.txt
# KubeRay starts Ray with `bash -lc`, which reads this file: CANN's toolkit and ATB environments.
RUN printf '%s\n' '[ -f /usr/local/Ascend/ascend-toolkit/set_env.sh ] && . /usr/local/Ascend/ascend-toolkit/set_env.sh' \
      '[ -f /usr/local/Ascend/nnal/atb/set_env.sh ] && . /usr/local/Ascend/nnal/atb/set_env.sh' \
      'true' > /etc/profile.d/ascend-vllm.sh
