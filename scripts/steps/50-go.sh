# The Go client (clients/go): module download, gofmt, go vet, and go test, whose integration
# tests call the real Python server started by with_test_server (scripts/lib/server.sh).
source "$ROOT/scripts/lib/server.sh"

GO_CLIENT="$ROOT/clients/go"

step_go_deps() {
    command -v go >/dev/null || die "go not found; the Go client needs Go >= 1.26"
    # Modules already in the module cache need no network, so an offline rerun passes; a cold
    # cache offline fails here, naming the module it could not fetch.
    (cd "$GO_CLIENT" && go mod download) || {
        log "go mod download failed: the Go client needs the module proxy ($(go env GOPROXY)) once"
        return 1
    }
}

step_go_fmt() {
    local unformatted
    unformatted=$(cd "$GO_CLIENT" && gofmt -l .)
    if [[ -n "$unformatted" ]]; then
        echo "gofmt would reformat (run: cd clients/go && gofmt -w .):" >&2
        echo "$unformatted" >&2
        return 1
    fi
}

step_go_vet() {
    (cd "$GO_CLIENT" && go vet ./...)
}

_go_test() {
    local out status
    out=$(mktemp)
    set +e
    (cd "$GO_CLIENT" && go test -count=1 -v ./...) >"$out" 2>&1
    status=$?
    set -e
    if [[ $status -ne 0 ]]; then
        cat "$out" >&2
    else
        grep -E '^(ok|FAIL|\?) ' "$out" >&2 || true
    fi
    # Top-level tests only (subtests are indented).
    printf '    go test: %d passed, %d skipped, %d failed (against %s)\n' \
        "$(grep -c '^--- PASS' "$out")" "$(grep -c '^--- SKIP' "$out")" \
        "$(grep -c '^--- FAIL' "$out")" "${SERVEWISE_TEST_ADDRESS:-no server}" >&2
    rm -f "$out"
    return "$status"
}

step_go_test() {
    with_test_server _go_test
}

SETUP_STEPS+=(go_deps)
CHECK_STEPS+=(go_fmt go_vet go_test)
