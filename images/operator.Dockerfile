# syntax=docker/dockerfile:1.7
# moe-operator: the operator image. Slim on purpose: kopf, the Kubernetes client, pydantic, jinja2 and the
# Prometheus client only (pyproject dependencies without extras; no torch, no ray), pinned by
# images/operator-constraints.txt. Runs as UID 65532 with a read-only root filesystem (the chart mounts /tmp).
#
# Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/moe-operator/operator:0.1.0 .
# Base image: pinned by tag here; pin the digest at release time (docs/install.md, "Images").
ARG PYTHON_IMAGE=docker.io/library/python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# setuptools packages both source roots (pyproject: where = ["operator", "runtime"]); moe_runtime is pure Python
# and imports torch/ray only when used, which the operator never does.
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY runtime/ runtime/
COPY images/operator-constraints.txt /tmp/constraints.txt
RUN python -m venv /opt/moe \
 && /opt/moe/bin/pip install --constraint /tmp/constraints.txt . \
 && /opt/moe/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'ray')))" \
 && /opt/moe/bin/moe-operator --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="moe-operator" \
      org.opencontainers.image.description="Kubernetes operator serving MoE LLMs through KubeRay at the lowest cost per token" \
      org.opencontainers.image.source="https://github.com/moe-operator/moe-operator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/moe /opt/moe
ENV PATH=/opt/moe/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["moe-operator"]
CMD ["--all-namespaces"]
