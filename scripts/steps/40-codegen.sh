# Generated Python, Go and TypeScript code (buf.gen.yaml): install the pinned plugins, and fail
# when the committed code in service/servewise/v1, clients/go/servewisev1 or clients/ts/src/gen is not what
# `buf generate` makes from protos/ today (the Go/TS twin of tests/test_generated_code.py).
# Fix a failure with scripts/gen-clients.
source "$ROOT/scripts/lib/codegen.sh"

step_codegen_install() {
    codegen_install
}

step_codegen_fresh() {
    local tmp dir status=0
    tmp=$(mktemp -d)
    codegen_generate "$tmp" || { rm -rf "$tmp"; return 1; }
    for dir in "${CODEGEN_OUTPUTS[@]}"; do
        if [[ ! -d "$tmp/$dir" ]]; then
            echo "buf generate wrote nothing to $dir" >&2
            status=1
        elif [[ ! -d "$ROOT/$dir" ]]; then
            echo "$dir is not committed; run scripts/gen-clients" >&2
            status=1
        elif ! diff -r -q -x __pycache__ "$tmp/$dir" "$ROOT/$dir" >&2; then
            echo "$dir is stale (differs from buf generate); run scripts/gen-clients" >&2
            status=1
        fi
    done
    rm -rf "$tmp"
    return "$status"
}

SETUP_STEPS+=(codegen_install)
CHECK_STEPS+=(codegen_fresh)
