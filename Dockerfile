# syntax=docker/dockerfile:1
# The calsync image: the `calsync` command (operator, worker, gateway, run) and nothing else.
# Published as ghcr.io/calsync/calsync:<version>, the Helm chart's default image
# (charts/calsync/values.yaml image.repository; the tag defaults to the chart's appVersion).
#
#   docker build -t ghcr.io/calsync/calsync:0.1.0 .
#
# Two stages: the builder installs calsync and its pinned dependencies (constraints.txt) into a
# virtual environment; the final stage is the same slim Python with that environment copied in,
# no compiler, no pip cache, and a numeric non-root user (65532, the chart's runAsUser) so that
# Kubernetes' runAsNonRoot can verify it.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/calsync
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY calsync ./calsync
RUN /opt/calsync/bin/pip install --constraint constraints.txt . \
 && /opt/calsync/bin/pip uninstall --yes pip setuptools wheel \
 && find /opt/calsync -name '__pycache__' -prune -exec rm -rf {} + \
 && /opt/calsync/bin/python -m compileall -q /opt/calsync/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="calsync" \
      org.opencontainers.image.description="Kubernetes-native calendar sync" \
      org.opencontainers.image.source="https://github.com/calsync/calsync" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.calsync.image.repository="ghcr.io/calsync/calsync"
COPY --from=builder /opt/calsync /opt/calsync
ENV PATH=/opt/calsync/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_STATE_HOME=/var/lib/calsync
# The state directory (SQLite store of `calsync run`) belongs to the runtime user; the chart
# mounts a volume there and at /tmp, the root filesystem stays read-only.
RUN install -d -o 65532 -g 65532 -m 0750 /var/lib/calsync
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8081 9090
ENTRYPOINT ["calsync"]
CMD ["run"]
