# The typed Python client (clients/python/servewise_client): strict mypy like the service. Its
# tests are pytest's (tests/clients, against the real server on an ephemeral port).
step_mypy_client() {
    "$VENV/bin/mypy" -p servewise_client
}
CHECK_STEPS+=(mypy_client)
