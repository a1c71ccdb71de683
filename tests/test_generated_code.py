"""The committed generated code in service/servewise/v1 matches what protos/ generates now."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GENERATED = REPO / "service" / "servewise" / "v1"
BUF = REPO / "tools" / "node_modules" / ".bin" / "buf"


def _files(root: Path) -> set[str]:
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.name != "__init__.py"
    }


@pytest.mark.skipif(
    not BUF.exists(), reason="buf is installed into tools/ by scripts/test (step buf_install)"
)
def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    """`buf generate` (buf.gen.yaml) reproduces every committed Python file byte for byte."""
    result = subprocess.run(
        [str(BUF), "generate", "--template", "buf.gen.yaml", "-o", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fresh = tmp_path / "service" / "servewise" / "v1"

    committed_files, fresh_files = _files(GENERATED), _files(fresh)
    assert committed_files == fresh_files, "run scripts/gen-clients and commit the result"
    _, mismatch, errors = filecmp.cmpfiles(GENERATED, fresh, sorted(fresh_files), shallow=False)
    assert not errors
    assert not mismatch, f"stale generated code {mismatch}: run scripts/gen-clients and commit"


def test_generated_package_is_importable() -> None:
    """servewise.v1 is a package whose modules import with absolute servewise.v1 imports."""
    assert (GENERATED / "__init__.py").is_file()
    from servewise.v1 import servewise_pb2, servewise_pb2_grpc  # noqa: PLC0415

    assert servewise_pb2.DESCRIPTOR.package == "servewise.v1"
    assert hasattr(servewise_pb2_grpc, "ServewiseServiceStub")
