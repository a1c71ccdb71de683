# The TypeScript client (clients/ts): npm ci, tsc --noEmit, and the Node test runner, whose
# integration tests call the real Python server started by with_test_server (scripts/lib/server.sh).
source "$ROOT/scripts/lib/server.sh"

TS_CLIENT="$ROOT/clients/ts"

step_ts_deps() {
    command -v node >/dev/null || die "node not found; the TypeScript client needs Node >= 20"
    command -v npm >/dev/null || die "npm not found; it installs the TypeScript client's packages"
    node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' \
        || die "node $(node --version) found; the TypeScript client needs Node >= 20"
    # npm ci deletes node_modules and reinstalls from package-lock.json; skip it while the
    # manifest, the lockfile and Node are what the last install used.
    local stamp="$TS_CLIENT/node_modules/.servewise-installed" want
    want="$(cat "$TS_CLIENT/package.json" "$TS_CLIENT/package-lock.json" | sha256sum | cut -d' ' -f1) $(node --version)"
    if [[ "$(cat "$stamp" 2>/dev/null || true)" == "$want" ]]; then
        return 0
    fi
    log "npm ci in clients/ts"
    (cd "$TS_CLIENT" && npm ci --no-audit --no-fund --loglevel=error)
    printf '%s' "$want" >"$stamp"
}

step_ts_typecheck() {
    (cd "$TS_CLIENT" && node_modules/.bin/tsc --noEmit)
}

_ts_test() {
    local out status
    out=$(mktemp)
    set +e
    (cd "$TS_CLIENT" && npm test --silent) >"$out" 2>&1
    status=$?
    set -e
    cat "$out" >&2
    # The spec reporter's summary ("ℹ pass N"), as one plain line.
    _ts_count() { awk -v k="$1" '$2 == k { n = $3 } END { print n + 0 }' "$out"; }
    printf 'ts_test: %d passed, %d failed, %d skipped (against %s)\n' \
        "$(_ts_count pass)" "$(( $(_ts_count fail) + $(_ts_count cancelled) ))" \
        "$(_ts_count skipped)" "${SERVEWISE_TEST_ADDRESS:-no server}" >&2
    rm -f "$out"
    return "$status"
}

step_ts_test() {
    with_test_server _ts_test
}

SETUP_STEPS+=(ts_deps)
CHECK_STEPS+=(ts_typecheck ts_test)
