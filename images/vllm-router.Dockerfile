# syntax=docker/dockerfile:1.7
# vllm-router: the Ray head of an engine: vllm MoEDeployment with two or more pools (Images.vllm_router).
# Ray's LLM image, exactly the one the vLLM workers run (one Ray version and Python minor per cluster), plus the
# torch-free modules of moe_runtime that the router app imports (import_path moe_runtime.vllm_router:build_app;
# operator/moe_operator/render/vllm_router.py). The router runs only on the head (custom resource moe-router), so
# the workers keep Ray's upstream image. Nothing else of moe_runtime is copied: it would need torch.
#
# Build from the repository root:
#   docker build -f images/vllm-router.Dockerfile -t ghcr.io/moe-operator/vllm-router:0.1.0 .
ARG RAY_VERSION=2.58.0
ARG RAY_LLM_IMAGE=docker.io/rayproject/ray-llm:${RAY_VERSION}-py312-cu130
FROM ${RAY_LLM_IMAGE}
COPY --chown=1000:100 runtime/moe_runtime/__init__.py runtime/moe_runtime/routing.py runtime/moe_runtime/pool_choice.py runtime/moe_runtime/vllm_router.py /home/ray/moe-router/moe_runtime/
# A .pth file puts the router on the image's Python path for every Ray worker process, whatever env the pod sets.
RUN python -c "import site; open(site.getsitepackages()[0] + '/moe-router.pth', 'w').write('/home/ray/moe-router\n')" \
 && python -c "import sys, moe_runtime.vllm_router; assert 'torch' not in sys.modules"
