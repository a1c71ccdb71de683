# Shared helpers for scripts/*: sourced, not run. Sets ROOT, cds there, and provides
# ensure_venv [EXTRAS], which creates .venv with python3 when missing and (re)installs the
# package only when pyproject.toml changed since the last install, so reruns are fast.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

VENV="$ROOT/.venv"
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ensure_venv() {
    local extras=${1:-}
    if [[ ! -x "$PY" ]]; then
        local base=${PYTHON:-python3}
        command -v "$base" >/dev/null || die "$base not found; install Python >= 3.11"
        "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || die "$base is $("$base" --version 2>&1); Servewise needs Python >= 3.11"
        log "creating .venv with $("$base" --version 2>&1)"
        "$base" -m venv "$VENV"
    fi
    # The stamp records what was installed from which pyproject.toml; a [dev] install also
    # satisfies a runtime-only request.
    local want have spec
    # The C extension is compiled at install time, so its source is part of what was installed.
    want="$(cat pyproject.toml service/servewise/core/*.c | sha256sum | cut -d' ' -f1) $("$PY" -c 'import sys; print(sys.version)')"
    for spec in dev "$extras"; do
        have=$(cat "$VENV/.servewise-installed-${spec:-runtime}" 2>/dev/null || true)
        if [[ "$have" == "$want" ]] && "$PY" -c 'import servewise' 2>/dev/null; then
            return 0
        fi
    done
    local target="."
    [[ -n "$extras" ]] && target=".[$extras]"
    log "pip install -e '$target'"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -e "$target"
    rm -f "$VENV"/.servewise-installed-*
    printf '%s' "$want" >"$VENV/.servewise-installed-${extras:-runtime}"
}
