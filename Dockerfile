# syntax=docker/dockerfile:1
# Servewise gRPC server. Build: docker build -t servewise .
# Run:   docker run --rm -p 50051:50051 -p 9464:9464 servewise
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: compile the C simulator kernel and install the package into a venv --------------
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, so editing the code does not reinstall them.
COPY pyproject.toml README.md ./
RUN /opt/venv/bin/python -c "import subprocess, sys, tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
subprocess.run([sys.executable, '-m', 'pip', 'install', *deps], check=True)"
COPY service ./service
# Runtime dependencies only (no [dev] extra); the C extension is built here, where gcc is.
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/python -c "import servewise.server, servewise.core._batchsim"

# --- runtime: no compiler, no sources, non-root ---------------------------------------------
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 servewise \
    && useradd --system --uid 10001 --gid servewise --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin servewise
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SERVEWISE_ADDRESS=0.0.0.0:50051 \
    SERVEWISE_METRICS_ADDRESS=0.0.0.0:9464 \
    SERVEWISE_LOG_LEVEL=info \
    SERVEWISE_GRACE_S=10
USER 10001:10001
EXPOSE 50051 9464
# gRPC health check of ServewiseService (grpc_health_probe is not in the image).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; port = os.environ.get('SERVEWISE_ADDRESS', '0.0.0.0:50051').rpartition(':')[2]; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:' + port)).Check(h.HealthCheckRequest(service='servewise.v1.ServewiseService'), timeout=3); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]
# SIGTERM drains: health NOT_SERVING, in-flight RPCs get SERVEWISE_GRACE_S seconds, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["servewise"]
CMD ["serve"]
