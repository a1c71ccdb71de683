"""The committed generated code in service/servewise/v1 matches what protos/ generates now."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATED = REPO / "service" / "servewise" / "v1"
GEN_SCRIPT = REPO / "scripts" / "gen-protos"


def _files(root: Path) -> set[str]:
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    """Regenerating from protos/ reproduces every committed file byte for byte, and no more."""
    result = subprocess.run(
        [str(GEN_SCRIPT), str(tmp_path)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    fresh = tmp_path / "servewise" / "v1"

    committed_files, fresh_files = _files(GENERATED), _files(fresh)
    assert committed_files == fresh_files, "run scripts/gen-protos and commit the result"
    _, mismatch, errors = filecmp.cmpfiles(GENERATED, fresh, sorted(fresh_files), shallow=False)
    assert not errors
    assert not mismatch, f"stale generated code {mismatch}: run scripts/gen-protos and commit"


def test_generated_package_is_importable() -> None:
    """servewise.v1 is a package whose modules import with absolute servewise.v1 imports."""
    assert (GENERATED / "__init__.py").is_file()
    from servewise.v1 import servewise_pb2, servewise_pb2_grpc  # noqa: PLC0415

    assert servewise_pb2.DESCRIPTOR.package == "servewise.v1"
    assert hasattr(servewise_pb2_grpc, "ServewiseServiceStub")
