# syntax=docker/dockerfile:1
# Detour images, one Dockerfile with two targets:
#   docker build --target proxy    -t detour-proxy:0.1.0 .     # detour-proxy (+ detour-sim)
#   docker build --target operator -t detour-operator:0.1.0 .  # detour-operator
# The builder stage builds the detour wheel and installs it with its dependencies into a virtualenv;
# the final stages copy only that virtualenv onto a clean slim image (no compilers, no build
# tools), and run as the non-root user 10001.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: wheel + virtualenv ------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY operator ./operator
# Build the project's wheel (PEP 517, isolated build env), then install it with its dependencies
# into the virtualenv that the final stages copy.
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/detour \
 && /opt/detour/bin/pip install /wheels/detour-*.whl \
 && /opt/detour/bin/pip uninstall --yes pip

# ---- runtime base: the venv on a clean slim image, non-root ---------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="Detour" \
      org.opencontainers.image.description="Kubernetes-native reliability gateway for LLM calls" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 detour \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
      --shell /usr/sbin/nologin detour
COPY --from=builder /opt/detour /opt/detour
ENV PATH=/opt/detour/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
WORKDIR /tmp
# Numeric user so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# ---- proxy: the data plane (also runs detour-sim for the in-cluster examples) ---------------
FROM runtime AS proxy
EXPOSE 8080
ENTRYPOINT ["detour-proxy"]
CMD ["--config", "/etc/detour/config/config.yaml", "--host", "0.0.0.0", "--port", "8080", "--wait-for-config"]

# ---- operator: the kopf control plane --------------------------------------------------------
FROM runtime AS operator
EXPOSE 8081 9090
ENTRYPOINT ["detour-operator"]
