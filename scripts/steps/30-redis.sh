# A real redis-server for the store tests (tests/store run the same suite against memory,
# SQLite and Redis). The Redis tests read SERVEWISE_TEST_REDIS_URL and skip when it is unset,
# so plain `pytest` works without Redis; here it is always set, so they run.
#
# Steps run in subshells, so an export from inside step_redis would not reach the pytest step:
# the port is picked and the URL exported when this file is sourced (in scripts/test's own
# shell), step_redis installs redis-server when missing and starts it on that port, and an EXIT
# trap stops it (and removes its temp dir) when scripts/test ends, however it ends.
#
# A caller that already set SERVEWISE_TEST_REDIS_URL gets its own Redis used, and none started.

REDIS_TEST_DIR=""
REDIS_TEST_PORT=""

_redis_free_port() {
    # Port 0 lets the kernel choose; the socket closes at once, so redis-server can bind it.
    "${PYTHON:-python3}" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

_redis_ping() {
    # RESP inline PING over bash's /dev/tcp: no redis-cli needed.
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'PING\r\n' >&3
        IFS= read -r -t 2 reply <&3 || exit 1
        [[ $reply == "+PONG"* ]]
    ) 2>/dev/null
}

_redis_install() {
    command -v redis-server >/dev/null && return 0
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            die "redis-server is not installed, and this user is not root and cannot sudo to" \
                "install it: run 'apt-get install redis-server' (or install Redis >= 6 some" \
                "other way), or set SERVEWISE_TEST_REDIS_URL=redis://HOST:PORT/DB to a Redis" \
                "the tests may write to"
        fi
    fi
    command -v apt-get >/dev/null \
        || die "redis-server is not installed and there is no apt-get to install it with:" \
            "install Redis >= 6, or set SERVEWISE_TEST_REDIS_URL=redis://HOST:PORT/DB"
    local install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q
        --no-install-recommends redis-server)
    log "installing redis-server: ${install[*]}"
    # Without `apt-get update` first (slow); only when the package lists are stale or missing.
    if ! "${install[@]}"; then
        log "retrying after apt-get update"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q \
            && "${install[@]}" \
            || die "could not install redis-server with apt-get (see above); install Redis" \
                ">= 6, or set SERVEWISE_TEST_REDIS_URL=redis://HOST:PORT/DB"
    fi
    command -v redis-server >/dev/null || die "apt-get installed redis-server, but it is not on PATH"
}

_redis_stop() {
    [[ -n $REDIS_TEST_DIR && -d $REDIS_TEST_DIR ]] || return 0
    local pid
    pid=$(cat "$REDIS_TEST_DIR/redis.pid" 2>/dev/null || true)
    if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            # Gone but not yet reaped (a container's init may be slow to reap the daemon).
            [[ $(ps -o stat= -p "$pid" 2>/dev/null || true) == Z* ]] && break
            sleep 0.1
        done
    fi
    rm -rf "$REDIS_TEST_DIR"
}

step_redis() {
    if [[ -z $REDIS_TEST_DIR ]]; then
        echo "using the caller's SERVEWISE_TEST_REDIS_URL=$SERVEWISE_TEST_REDIS_URL"
        return 0
    fi
    _redis_install
    redis-server --version
    # No persistence: the tests check durability across store reopens (the server stays up).
    redis-server --bind 127.0.0.1 --port "$REDIS_TEST_PORT" --save '' --appendonly no \
        --daemonize yes --pidfile "$REDIS_TEST_DIR/redis.pid" --dir "$REDIS_TEST_DIR" \
        --logfile "$REDIS_TEST_DIR/redis.log"
    for _ in $(seq 100); do
        if _redis_ping "$REDIS_TEST_PORT"; then
            echo "redis-server on $SERVEWISE_TEST_REDIS_URL (stopped when scripts/test ends)"
            return 0
        fi
        sleep 0.1
    done
    cat "$REDIS_TEST_DIR/redis.log" >&2 || true
    die "redis-server did not answer PING on port $REDIS_TEST_PORT within 10 s (log above)"
}

if [[ -z ${SERVEWISE_TEST_REDIS_URL:-} ]]; then
    REDIS_TEST_DIR=$(mktemp -d "${TMPDIR:-/tmp}/servewise-redis.XXXXXX")
    trap _redis_stop EXIT
    REDIS_TEST_PORT=$(_redis_free_port)
    export SERVEWISE_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_TEST_PORT/0"
fi
SETUP_STEPS+=(redis)
