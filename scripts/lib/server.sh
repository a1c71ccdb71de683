# Sourced by scripts/steps/*.sh: run a command against a real Servewise server.
#
#   with_test_server CMD [ARGS...]
#
# Starts `python -m servewise serve` from the project's venv on a free loopback port (metrics
# off, logs to $ROOT/.test-server.log), waits until the gRPC health service answers SERVING,
# exports SERVEWISE_TEST_ADDRESS=127.0.0.1:PORT for CMD, runs CMD, then stops the server with
# SIGTERM (it must exit 0). Returns CMD's status, or 1 if the server failed.

with_test_server() {
    local port log pid status
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log="$ROOT/.test-server.log"
    "$PY" -m servewise serve --address "127.0.0.1:$port" --metrics-address off >"$log" 2>&1 &
    pid=$!
    if ! "$PY" - "$port" <<'PY'
import sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

deadline = time.monotonic() + 30
with grpc.insecure_channel(f"127.0.0.1:{sys.argv[1]}") as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < deadline:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                sys.exit(0)
        except grpc.RpcError:
            pass
        time.sleep(0.1)
sys.exit(1)
PY
    then
        kill "$pid" 2>/dev/null || true
        log "test server did not become healthy; its log:"
        cat "$log" >&2
        return 1
    fi
    set +e
    SERVEWISE_TEST_ADDRESS="127.0.0.1:$port" "$@"
    status=$?
    set -e
    kill -TERM "$pid"
    if ! wait "$pid"; then
        log "test server did not exit cleanly on SIGTERM; its log:"
        cat "$log" >&2
        return 1
    fi
    return "$status"
}
