# syntax=docker/dockerfile:1
# Servewise gRPC server. Build: docker build -t servewise:0.1.0 .
# Run:   docker run --rm -p 50051:50051 -p 9464:9464 servewise:0.1.0
# Kubernetes manifests and every setting: deploy/README.md. tests/deploy checks this file.
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
# The package sources: whatever .dockerignore lets in (service/ and clients/python/, the
# package directories pyproject.toml maps), so a new package directory needs no edit here.
COPY . ./
# Runtime dependencies only (no [dev] extra); the C extension is built here, where gcc is.
# pip and setuptools are build tools: removed so the final venv holds only what the server runs.
RUN /opt/venv/bin/pip install . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import servewise.server, servewise.core._batchsim" \
    && /opt/venv/bin/pip uninstall --yes setuptools pip

# --- runtime: no compiler, no sources, non-root ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="servewise" \
      org.opencontainers.image.description="gRPC service that finds the cheapest way to serve a model within its latency SLO." \
      org.opencontainers.image.version="${VERSION}"
# Fixed UID/GID 10001: Kubernetes' runAsUser/fsGroup (deploy/) name the same numbers.
RUN groupadd --system --gid 10001 servewise \
    && useradd --system --uid 10001 --gid servewise --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin servewise \
    && mkdir -p /var/lib/servewise \
    && chown 10001:10001 /var/lib/servewise \
    && chmod 0750 /var/lib/servewise
COPY --from=build /opt/venv /opt/venv
# SERVEWISE_STORE / SERVEWISE_SQLITE_PATH are read once the state store lands (issue 4): unset
# store = SQLite at SERVEWISE_SQLITE_PATH, redis://HOST:PORT/DB = Redis (several replicas).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SERVEWISE_ADDRESS=0.0.0.0:50051 \
    SERVEWISE_METRICS_ADDRESS=0.0.0.0:9464 \
    SERVEWISE_LOG_LEVEL=info \
    SERVEWISE_GRACE_S=10 \
    SERVEWISE_SQLITE_PATH=/var/lib/servewise/servewise.db
# SQLite in WAL mode writes servewise.db-wal/-shm beside the file: the directory must be
# writable, so the volume is the directory (created above, owned by the server's user).
VOLUME ["/var/lib/servewise"]
USER 10001:10001
EXPOSE 50051 9464
# gRPC health check of ServewiseService (grpc_health_probe is not in the image). The port comes
# from SERVEWISE_ADDRESS: pass --address on the command line and this check misses it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; port = os.environ.get('SERVEWISE_ADDRESS', '0.0.0.0:50051').rpartition(':')[2]; r = g.HealthStub(grpc.insecure_channel('127.0.0.1:' + port)).Check(h.HealthCheckRequest(service='servewise.v1.ServewiseService'), timeout=3); sys.exit(0 if r.status == h.HealthCheckResponse.SERVING else 1)"]
# SIGTERM drains: health NOT_SERVING, in-flight RPCs get SERVEWISE_GRACE_S seconds, exit 0.
# The server installs its own SIGTERM/SIGINT handlers, so it needs no init process as PID 1.
STOPSIGNAL SIGTERM
ENTRYPOINT ["servewise"]
CMD ["serve"]
