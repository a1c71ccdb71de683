# Sourced by scripts/gen-clients and scripts/steps/40-codegen.sh (after scripts/lib/common.sh):
# the pinned code generators for Python, Go and TypeScript (buf.gen.yaml) and how to run them.
#
#   codegen_install          installs missing or wrong-version plugins into the git-ignored tools/
#   codegen_generate DIR     runs `buf generate` with every output under DIR (DIR/clients/...)
#   CODEGEN_OUTPUTS          the generated directories, relative to the repo root
#
# The Python plugins come from the project's venv (grpcio-tools, mypy-protobuf); buf does not
# write __init__.py, which the Python package keeps as a committed, hand-made file.

CODEGEN_TOOLS="$ROOT/tools"
CODEGEN_BUF_VERSION=${BUF_VERSION:-1.75.0}
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
TS_PROTO_VERSION=2.18.0

CODEGEN_OUTPUTS=(service/servewise/v1 clients/go/servewisev1 clients/ts/src/gen)

# A Go binary built by `go install` records its module version; match it exactly.
_codegen_go_tool_version() {
    go version -m "$1" 2>/dev/null | awk '$1 == "mod" { print $3; exit }'
}

_codegen_go_install() {
    local bin=$1 pkg=$2 version=$3
    if [[ -x "$CODEGEN_TOOLS/bin/$bin" ]] \
        && [[ "$(_codegen_go_tool_version "$CODEGEN_TOOLS/bin/$bin")" == "$version" ]]; then
        return 0
    fi
    command -v go >/dev/null || die "go not found; it builds $bin ($pkg@$version)"
    log "go install $pkg@$version"
    mkdir -p "$CODEGEN_TOOLS/bin"
    GOBIN="$CODEGEN_TOOLS/bin" GOFLAGS=-mod=mod go install "$pkg@$version"
}

codegen_install() {
    _codegen_go_install protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go \
        "$PROTOC_GEN_GO_VERSION"
    _codegen_go_install protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc \
        "$PROTOC_GEN_GO_GRPC_VERSION"
    local have
    have=$(node -p 'require(process.argv[1]).version' \
        "$CODEGEN_TOOLS/node_modules/ts-proto/package.json" 2>/dev/null || true)
    if [[ "$have" != "$TS_PROTO_VERSION" ]]; then
        command -v npm >/dev/null || die "npm not found; it installs ts-proto"
        log "npm install ts-proto@$TS_PROTO_VERSION into tools/"
        mkdir -p "$CODEGEN_TOOLS"
        npm install --prefix "$CODEGEN_TOOLS" --no-audit --no-fund --save-exact --loglevel=error \
            "ts-proto@$TS_PROTO_VERSION"
    fi
    [[ -x "$CODEGEN_TOOLS/node_modules/.bin/buf" ]] \
        || die "buf not installed in tools/; scripts/test installs it (buf_install)"
    [[ -x "$ROOT/.venv/bin/protoc-gen-mypy" ]] \
        || die ".venv has no mypy-protobuf; run scripts/test (it installs .[dev])"
}

codegen_generate() {
    local out=$1
    (cd "$ROOT" && "$CODEGEN_TOOLS/node_modules/.bin/buf" generate --template buf.gen.yaml -o "$out")
    # Python packages need their __init__.py, which no generator writes.
    : >"$out/service/servewise/v1/__init__.py"
}
