"""`servewise plan | simulate | profile | plot` end to end: a real ONNX model, real servers.

The ONNX models are built here with onnx.helper (a small MLP with a dynamic batch dimension)
and profiled for real with ONNX Runtime; the profile file then drives `plan --local`.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from servewise_client import read_profile

from servewise import cli

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

BATCH_SIZES = [1, 2, 4, 8, 16, 32, 64]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _mlp(path: Path, *, batch: Any = "batch", features: Any = 64, hidden: int = 256) -> Path:
    """A two-layer MLP (Gemm, Relu, Gemm, Softmax): x[batch, 64] -> y[batch, 10]."""
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array((rng.standard_normal((64, hidden)) * 0.1).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((hidden, 10)) * 0.1).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(10, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9  # readable by every ONNX Runtime the profile extra allows
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def mlp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test MLP with a dynamic batch dimension."""
    return _mlp(tmp_path_factory.mktemp("models") / "mlp.onnx")


@pytest.fixture(scope="module")
def mlp_profile(mlp_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`servewise profile` of the test MLP at 1..64 (few repeats, to stay fast)."""
    out = tmp_path_factory.mktemp("profiles") / "mlp-profile.yaml"
    argv = ["profile", str(mlp_model), "--warmup", "2", "--repeats", "10", "-o", str(out)]
    assert cli.main(argv) == 0
    return out


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("servewise"), err
    assert "error:" in lines[0], err
    return lines[0]


def _plan_flags(profile: Path) -> list[str]:
    """A request the measured MLP can serve: half its best throughput, a generous SLO."""
    points = read_profile(profile).points
    best = max(p.batch_size / p.latency_ms * 1000 for p in points)
    slo_ms = max(20 * max(p.latency_ms for p in points), 5.0)
    return [
        "--instance", "cpu:0.10", "--profile", str(profile),
        "--rate", f"{best / 2:.0f}", "--slo-ms", f"{slo_ms:.3f}",
    ]  # fmt: skip


# --- help and usage ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("plan", ["--file", "--rate", "--slo-ms", "--profile", "--instance", "--export-dir"]),
        ("simulate", ["--file", "--batch", "--delay-ms", "--replicas", "--local"]),
        ("profile", ["--callable", "--batch-sizes", "--warmup", "--repeats", "--output"]),
        ("plot", ["--output", "--rate", "--local"]),
    ],
)
def test_help_documents_the_flags(
    command: str, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command's --help exits 0 and lists its main flags."""
    code, out, _ = _run([command, "--help"], capsys)
    assert code == 0
    for flag in flags:
        assert flag in out


@pytest.mark.parametrize(
    "argv",
    [
        ["plan"],
        ["plan", "--rate", "10", "--slo-ms", "5"],
        ["plan", "--instance", "cpu:0.1", "--rate", "10", "--slo-ms", "5"],
        ["plan", "--linear", "1:1", "--rate", "10", "--slo-ms", "5"],
        ["plan", "--instance", "cpu", "--linear", "1:1", "--rate", "10", "--slo-ms", "5"],
        ["plan", "--instance", "cpu:free", "--linear", "1:1"],
        ["plan", "--instance", "cpu:0.1:lots", "--linear", "1:1"],
        ["plan", "--instance", "cpu:0.1:8GiB", "--linear", "1:1", "--rate", "1", "--slo-ms", "5"],
        ["plan", "--linear", "1:x"],
        ["plan", "--rate", "-3"],
        ["plan", "--percentile", "100"],
        ["plan", "--batch-sizes", "8..2"],
        ["plan", "--current", "cpu:4:1"],
        ["plan", "--hpa-metric", "memory"],
        ["simulate", "--instance", "cpu:0.1", "--linear", "1:1", "--rate", "10"],
        ["simulate", "--batch", "0"],
        ["profile"],
        ["profile", "model.onnx", "--callable", "m:f"],
        ["profile", "--callable", "m:f", "--shape", "x=3"],
        ["profile", "model.onnx", "--repeats", "0"],
        ["profile", "model.onnx", "--batch-sizes", "0,1"],
        ["plot", "--output"],
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Command lines that cannot make a request exit 2 with one line on stderr, nothing else."""
    code, out, err = _run(argv, capsys)
    assert code == 2
    assert out == ""
    _one_error_line(err)


# --- profile -----------------------------------------------------------------------------------


def test_profile_measures_every_batch_size(
    mlp_profile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The profile of the ONNX MLP has batch sizes 1..64 with median <= p99 and memory."""
    profile = read_profile(mlp_profile)
    assert [p.batch_size for p in profile.points] == BATCH_SIZES
    for point in profile.points:
        assert point.latency_ms > 0
        assert point.p99_latency_ms is not None
        assert point.p99_latency_ms >= point.latency_ms
        assert point.memory_bytes is not None
        assert point.memory_bytes >= 0
        assert point.extra["runs"] == 10
    assert profile.memory is not None
    assert profile.memory.model_bytes > 0
    assert profile.metadata["runtime"].startswith("onnxruntime")
    assert profile.metadata["inputs"] == {"x": ["batch", 64]}
    with capsys.disabled():  # the figures, for whoever reads the test log with -s
        print("\n" + cli.format_profile(profile))


def test_profile_prints_a_table_and_json(
    mlp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table lists each batch size; --json prints the file's content instead."""
    out_file = tmp_path / "p.json"
    base = ["profile", str(mlp_model), "--batch-sizes", "1,4", "--warmup", "0", "--repeats", "2"]
    code, out, err = _run([*base, "-o", str(out_file)], capsys)
    assert code == 0, err
    assert "median" in out
    assert f"wrote {out_file}" in out
    assert json.loads(out_file.read_text())["format"] == "servewise-profile/1"
    code, out, _ = _run([*base, "-o", str(out_file), "--json"], capsys)
    assert code == 0
    assert [p["batch_size"] for p in json.loads(out)["points"]] == [1, 4]


def test_profile_progress_bar(
    mlp_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--progress draws the bar on stderr even when stderr is not a terminal."""
    argv = ["profile", str(mlp_model), "--batch-sizes", "1,2", "--repeats", "2", "--progress"]
    code, _, err = _run([*argv, "-o", str(tmp_path / "p.yaml")], capsys)
    assert code == 0
    assert "batch 2" in err
    assert "100%" in err


def test_profile_a_python_callable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--callable MODULE:FUNCTION is imported from the working directory and timed."""
    (tmp_path / "toy_model.py").write_text(
        "calls = []\n"
        "def run(batch_size):\n"
        "    calls.append(batch_size)\n"
        "    return sum(range(batch_size * 1000))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "toy_model", raising=False)
    argv = ["profile", "--callable", "toy_model:run", "--batch-sizes", "1,8", "--warmup", "1"]
    code, out, err = _run([*argv, "--repeats", "3", "-o", "toy.yaml"], capsys)
    assert code == 0, err
    profile = read_profile(tmp_path / "toy.yaml")
    assert [p.batch_size for p in profile.points] == [1, 8]
    assert profile.metadata["model"] == "toy_model:run"
    assert sys.modules["toy_model"].calls == [1] * 4 + [8] * 4
    assert "toy_model:run" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--callable", "no_such_module_here:run"], "cannot import 'no_such_module_here'"),
        (["--callable", "json:no_such_function"], "has no attribute"),
        (["--callable", "json"], "expected MODULE:FUNCTION"),
        (["--callable", "json:loads"], "batch size 1 failed: TypeError"),
        (["missing.onnx"], "no such model file"),
    ],
)
def test_profile_failures_exit_1_with_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model that cannot be found, imported or run exits 1 with one line naming why."""
    code, _, err = _run(["profile", *argv, "-o", str(tmp_path / "p.yaml")], capsys)
    assert code == 1
    assert message in _one_error_line(err)


def test_profile_fixed_batch_dimension(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model exported with a fixed batch of 1 profiles batch 1 and explains larger ones."""
    model = _mlp(tmp_path / "fixed.onnx", batch=1)
    argv = ["profile", str(model), "--batch-sizes", "1,2", "-o", str(tmp_path / "p.yaml")]
    code, _, err = _run(argv, capsys)
    assert code == 1
    assert "fixed batch dimension 1" in _one_error_line(err)


def test_profile_symbolic_feature_dimension_needs_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A symbolic non-batch dimension needs --shape; with it the model profiles."""
    model = _mlp(tmp_path / "sym.onnx", features="features")
    base = ["profile", str(model), "--batch-sizes", "1,2", "--repeats", "2"]
    code, _, err = _run([*base, "-o", str(tmp_path / "p.yaml")], capsys)
    assert code == 1
    assert "--shape x=" in _one_error_line(err)
    code, _, err = _run([*base, "--shape", "x=64", "-o", str(tmp_path / "p.yaml")], capsys)
    assert code == 0, err
    code, _, err = _run([*base, "--shape", "nope=64", "-o", str(tmp_path / "p.yaml")], capsys)
    assert code == 1
    assert "nope" in _one_error_line(err)


# --- plan --------------------------------------------------------------------------------------


def test_plan_local_from_the_measured_profile(
    mlp_profile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`plan --local --profile` prints the plan table for the measured model."""
    code, out, err = _run(["plan", "--local", *_plan_flags(mlp_profile)], capsys)
    assert code == 0, err
    assert out.startswith("Plan: cpu B=")
    assert "[feasible]" in out
    for label in ("SLO", "capacity", "cost", "predicted", "simulated", "p99", "binding constraint"):
        assert label in out
    assert "real-time baseline" in out
    with capsys.disabled():
        print("\n" + out)


def test_plan_json_and_exports(
    mlp_profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json prints the response; --export-dir writes the four files for its plan."""
    export_dir = tmp_path / "exports"
    argv = ["plan", "--local", *_plan_flags(mlp_profile), "--json", "--export-dir", str(export_dir)]
    code, out, err = _run([*argv, "--name", "mlp", "--triton-kind", "KIND_CPU"], capsys)
    assert code == 0, err
    response = json.loads(out)
    plan = response["recommended"]["plan"]
    assert response["feasible"] is True
    assert sorted(p.name for p in export_dir.iterdir()) == [
        "config.pbtxt",
        "hpa.yaml",
        "ray_serve.yaml",
        "torchserve.properties",
    ]
    assert "exports:" in err  # stdout stays pure JSON
    triton = (export_dir / "config.pbtxt").read_text()
    assert f"max_batch_size: {plan['max_batch_size']}" in triton
    assert "kind: KIND_CPU" in triton
    hpa = yaml.safe_load((export_dir / "hpa.yaml").read_text())
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["minReplicas"] == plan["replicas"]
    assert hpa["metadata"]["name"] == "mlp"
    ray = yaml.safe_load((export_dir / "ray_serve.yaml").read_text())
    assert ray["applications"][0]["deployments"][0]["num_replicas"] == plan["replicas"]


def test_plan_memory_from_the_profile(
    mlp_profile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NAME:PRICE:MEMORY turns the profile's memory fit into the instance's memory model;
    memory too small for the model is the server's INVALID_ARGUMENT (exit 1, one line)."""
    flags = _plan_flags(mlp_profile)
    flags[1] = "cpu:0.10:64GiB"
    code, out, err = _run(["plan", "--local", *flags, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["feasible"] is True
    flags[1] = "cpu:0.10:1MiB"
    code, out, err = _run(["plan", "--local", *flags], capsys)
    assert code == 1
    assert "candidates[0].instance_type.memory.device_memory_bytes" in _one_error_line(err)


def test_plan_from_a_file_with_flag_overrides(
    mlp_profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--file reads a YAML spec (profile_file relative to it); flags override its values."""
    spec = {
        "candidates": [
            {
                "instance_type": {"name": "cpu", "price_per_hour": 0.1},
                "profile_file": mlp_profile.name,
            }
        ],
        "workload": {"rate_per_s": 100},
        "slo": {"latency_ms": 50},
    }
    spec_file = mlp_profile.parent / "request.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    code, out, err = _run(["plan", "--local", "--file", str(spec_file), "--json"], capsys)
    assert code == 0, err
    recommended = json.loads(out)["recommended"]
    assert recommended["utilisation"] * recommended["capacity_per_s"] == pytest.approx(100)
    code, out, err = _run(
        ["plan", "--local", "-f", str(spec_file), "--rate", "300", "--json"], capsys
    )
    assert code == 0, err
    recommended = json.loads(out)["recommended"]
    assert recommended["utilisation"] * recommended["capacity_per_s"] == pytest.approx(300)


def test_plan_against_a_server_at_an_address(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --local the command calls --address, or SERVEWISE_ADDRESS when not given."""
    flags = ["--instance", "g5:1.006", "--linear", "8:1.5:32", "--rate", "400", "--slo-ms", "100"]
    with cli.local_server() as address:
        code, out, err = _run(["plan", "--address", address, *flags], capsys)
        assert code == 0, err
        assert "Plan: g5 B=" in out
        monkeypatch.setenv("SERVEWISE_ADDRESS", address)
        code, out, err = _run(["plan", *flags, "--current", "g5:1:0:8"], capsys)
        assert code == 0, err
        assert "current plan" in out
        assert "saving vs current" in out


def test_plan_unreachable_server(
    free_port: Callable[[], int], capsys: pytest.CaptureFixture[str]
) -> None:
    """No server at --address: exit 1, one line suggesting --local."""
    flags = ["--instance", "g5:1", "--linear", "8:1.5:32", "--rate", "400", "--slo-ms", "100"]
    address = f"127.0.0.1:{free_port()}"
    code, out, err = _run(["plan", "--address", address, "--timeout-s", "3", *flags], capsys)
    assert code == 1
    assert out == ""
    line = _one_error_line(err)
    assert "UNAVAILABLE" in line or "DEADLINE_EXCEEDED" in line
    assert "--local" in line or "DEADLINE_EXCEEDED" in line


def test_plan_invalid_request_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    """A request the server rejects exits 1 with its field violations on one line."""
    flags = ["--instance", "g5:1", "--linear", "0:0", "--rate", "400", "--slo-ms", "100"]
    code, out, err = _run(["plan", "--local", *flags], capsys)
    assert code == 1
    assert out == ""
    line = _one_error_line(err)
    assert "INVALID_ARGUMENT" in line
    assert "candidates[0].profile.linear" in line


def test_plan_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing or malformed --file exits 1 with one line naming the problem."""
    code, _, err = _run(["plan", "--local", "--file", str(tmp_path / "none.yaml")], capsys)
    assert code == 1
    assert "cannot read" in _one_error_line(err)
    (tmp_path / "bad.yaml").write_text("workload: {rate: 3}\n")
    code, _, err = _run(["plan", "--local", "--file", str(tmp_path / "bad.yaml")], capsys)
    assert code == 1
    assert "rate" in _one_error_line(err)


def test_infeasible_plan_prints_but_exports_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An SLO no plan meets is an answer (exit 0); asking for its exports fails (exit 1)."""
    flags = ["--instance", "g5:1", "--linear", "10:1:16", "--rate", "100", "--slo-ms", "5"]
    code, out, _ = _run(["plan", "--local", *flags], capsys)
    assert code == 0
    assert "INFEASIBLE" in out
    assert "SERVICE_TIME" in out
    code, _, err = _run(["plan", "--local", *flags, "--export-dir", str(tmp_path)], capsys)
    assert code == 1
    assert "nothing to export" in _one_error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_local_mode_leaves_logging_as_it_was(capsys: pytest.CaptureFixture[str]) -> None:
    """--local silences the in-process server's logs on stdout and restores structlog after."""
    import structlog  # noqa: PLC0415

    before = structlog.get_config()
    flags = ["--instance", "g5:1", "--linear", "8:1.5:32", "--rate", "400", "--slo-ms", "100"]
    code, out, _ = _run(["plan", "--local", *flags, "--json"], capsys)
    assert code == 0
    json.loads(out)  # nothing but the response on stdout
    assert structlog.get_config() == before


# --- simulate ----------------------------------------------------------------------------------


def test_simulate_from_flags(mlp_profile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`simulate --local` with flags prints the latency percentiles and the SLO verdict."""
    argv = ["simulate", "--local", "--instance", "cpu:0.1", "--profile", str(mlp_profile)]
    argv += ["--rate", "1000", "--batch", "8", "--delay-ms", "1", "--replicas", "1"]
    code, out, err = _run([*argv, "--slo-ms", "50", "--num-requests", "5000"], capsys)
    assert code == 0, err
    assert out.startswith("Simulation: cpu B=8 T=1 ms N=1")
    assert "SLO" in out
    assert "met" in out
    assert "5,000 requests" in out


def test_simulate_from_a_plan_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A plan spec file serves simulate too, with the plan from flags; --json prints it."""
    spec = {
        "candidates": [
            {
                "instance_type": {"name": "g5", "price_per_hour": 1.0},
                "profile": {"linear": {"base_ms": 8, "per_item_ms": 1.5, "max_batch_size": 32}},
            }
        ],
        "workload": {"rate_per_s": 400},
        "slo": {"latency_ms": 100},
        "limits": {"max_replicas": 4},
    }
    (tmp_path / "plan.json").write_text(json.dumps(spec))
    argv = ["simulate", "--local", "-f", str(tmp_path / "plan.json"), "--batch", "16"]
    code, out, err = _run([*argv, "--replicas", "2", "--delay-ms", "4", "--json"], capsys)
    assert code == 0, err
    response = json.loads(out)
    assert response["meets_slo"] is True
    assert int(response["result"]["requests_simulated"]) > 0  # uint64: a JSON string


def test_simulate_invalid_plan(capsys: pytest.CaptureFixture[str]) -> None:
    """A batch above the profile's range is rejected by the server: exit 1, the field named."""
    argv = ["simulate", "--local", "--instance", "g5:1", "--linear", "8:1.5:32", "--rate", "10"]
    code, _, err = _run([*argv, "--batch", "64", "--replicas", "1"], capsys)
    assert code == 1
    assert "plan.max_batch_size" in _one_error_line(err)


# --- plot --------------------------------------------------------------------------------------


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_writes_a_png(
    mlp_profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`plot --local` writes a PNG of the frontier that matplotlib reads back."""
    pytest.importorskip("matplotlib")
    from matplotlib import image  # noqa: PLC0415

    out_file = tmp_path / "frontier.png"
    code, out, err = _run(
        ["plot", "--local", *_plan_flags(mlp_profile), "-o", str(out_file)], capsys
    )
    assert code == 0, err
    assert "frontier points" in out
    width, height = _png_size(out_file)
    assert (width, height) == (960, 600)
    pixels = image.imread(str(out_file))
    assert pixels.shape[:2] == (600, 960)
    assert float(pixels.std()) > 0  # something was drawn


def test_plot_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A PNG path that cannot be written exits 1 with one line."""
    pytest.importorskip("matplotlib")
    flags = ["--instance", "g5:1", "--linear", "8:1.5:32", "--rate", "400", "--slo-ms", "100"]
    target = tmp_path / "missing-dir" / "f.png"
    code, _, err = _run(["plot", "--local", *flags, "-o", str(target)], capsys)
    assert code == 1
    assert "cannot write" in _one_error_line(err)


# --- the installed command, end to end ---------------------------------------------------------


def _servewise() -> list[str]:
    script = Path(sys.executable).with_name("servewise")
    return [str(script)] if script.exists() else [sys.executable, "-m", "servewise"]


@pytest.mark.slow
def test_console_script_profile_then_plan(mlp_model: Path, tmp_path: Path) -> None:
    """`servewise profile` on the ONNX model writes a profile that `servewise plan --local`
    turns into a plan, as separate processes."""
    profile = tmp_path / "profile.json"
    measured = subprocess.run(
        [*_servewise(), "profile", str(mlp_model), "--repeats", "5", "-o", str(profile)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert measured.returncode == 0, measured.stderr
    for size in BATCH_SIZES:
        assert any(line.split()[:1] == [str(size)] for line in measured.stdout.splitlines())
    planned = subprocess.run(
        [*_servewise(), "plan", "--local", *_plan_flags(profile)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.startswith("Plan: cpu B=")
    assert planned.stderr == ""


def test_cli_import_stays_light() -> None:
    """Importing the CLI and server loads neither the optional heavy packages nor the client,
    so `servewise serve` keeps its small footprint."""
    code = (
        "import sys, servewise.cli, servewise.server; "
        "heavy = [m for m in ('onnxruntime', 'onnx', 'matplotlib', 'tqdm', 'servewise_client',"
        " 'servewise.profiling', 'servewise.core.exports') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# --- resources (PlanResources) --------------------------------------------------------------


def _resources_file(tmp_path: Path) -> Path:
    """A day in four steps for one deployment on a T4 (linear fit of the published table)."""
    spec = {
        "deployments": [
            {
                "name": "Chat Model",
                "candidates": [
                    {
                        "instance_type": {
                            "name": "g4dn.xlarge",
                            "price_per_hour": 0.526,
                            "max_batch_size": 64,
                            "cold_start_s": 45,
                        },
                        "profile": {
                            "linear": {"base_ms": 5.24, "per_item_ms": 2.288, "max_batch_size": 64}
                        },
                    }
                ],
                "slo": {"latency_ms": 300},
                "rate_profile": [
                    {"time_s": 0, "rate_per_s": 300},
                    {"time_s": 21600, "rate_per_s": 1700},
                    {"time_s": 43200, "rate_per_s": 1000},
                    {"time_s": 64800, "rate_per_s": 500},
                ],
            }
        ]
    }
    path = tmp_path / "day.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_resources_prints_strategies_and_writes_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`servewise resources --local -f day.yaml --export-dir` prints dedicated and autoscaled
    costs with the recommendation, and writes the four exports under the deployment's label."""
    out = tmp_path / "exports"
    code = cli.main(
        ["resources", "--local", "-f", str(_resources_file(tmp_path)), "--export-dir", str(out)]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "dedicated" in text
    assert "autoscaled" in text
    assert "recommended: " in text
    files = sorted(p.name for p in (out / "chat-model").iterdir())
    assert files == ["config.pbtxt", "hpa.yaml", "ray_serve.yaml", "torchserve.properties"]
    hpa = yaml.safe_load((out / "chat-model" / "hpa.yaml").read_text())
    assert hpa["metadata"]["name"] == "chat-model"


def test_resources_json_and_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints the response; a file that is not a request exits 1 with one line."""
    assert cli.main(["resources", "--local", "--json", "-f", str(_resources_file(tmp_path))]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recommended_strategy"] in {
        "RESOURCE_STRATEGY_DEDICATED",
        "RESOURCE_STRATEGY_AUTOSCALED",
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments: [{nonsense: 1}]\n")
    assert cli.main(["resources", "--local", "-f", str(bad)]) == 1
    assert "not a PlanResourcesRequest" in capsys.readouterr().err


# --- replay ------------------------------------------------------------------------------------

REPLAY_FLAGS = ["--instance", "gpu:2", "--linear", "200:20:64", "--slo-ms", "2000"]


def _conv_trace() -> Path:
    import os  # noqa: PLC0415

    return Path(os.environ["SERVEWISE_DATA_DIR"]) / "traces" / "AzureLLMInferenceTrace_conv.csv"


def test_replay_conv_trace_writes_json_and_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`servewise replay` on the real conv trace at 4x: a row per strategy, JSON and PNG files."""
    out_json, out_png = tmp_path / "replay.json", tmp_path / "replay.png"
    argv = ["replay", str(_conv_trace()), *REPLAY_FLAGS, "--time-scale", "4", "--interval-s", "15"]
    code = cli.main([*argv, "--out-json", str(out_json), "--out-png", str(out_png)])
    text = capsys.readouterr().out
    assert code == 0
    assert "4x the recorded rate" in text
    for name in (
        "controller",
        "static-realtime-peak",
        "static-batching-peak",
        "naive-threshold",
        "hindsight-optimal",
    ):
        assert name in text
    assert "migrations" in text
    data = json.loads(out_json.read_text())
    assert data["time_scale"] == 4.0
    assert len(data["strategies"]) == 5
    naive = data["strategies"]["naive-threshold"]
    assert naive["switches"] == naive["scale_actions"] + naive["migrations"]
    assert out_png.read_bytes().startswith(PNG_SIGNATURE)


def test_replay_seconds_trace_help_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A one-column CSV of seconds replays; a missing --instance is a usage error (2); an
    unreadable trace fails with one line (1)."""
    seconds = tmp_path / "t.csv"
    seconds.write_text("\n".join(f"{i * 0.1:.3f}" for i in range(3000)) + "\n")
    assert cli.main(["replay", str(seconds), *REPLAY_FLAGS]) == 0
    assert "hindsight-optimal" in capsys.readouterr().out
    code, out, _ = _run(["replay", "--help"], capsys)
    assert code == 0
    for flag in ("--time-scale", "--interval-s", "--out-json", "--out-png", "--instance"):
        assert flag in out
    code, out, err = _run(["replay", str(seconds), "--slo-ms", "100"], capsys)
    assert code == 2
    _one_error_line(err)
    code, out, err = _run(["replay", str(tmp_path / "missing.csv"), *REPLAY_FLAGS], capsys)
    assert code == 1
    _one_error_line(err)
