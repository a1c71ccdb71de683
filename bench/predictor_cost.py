"""Cost per plan of the analytic predictor's C entry points, against another commit's kernel.

Run (from the repo root)::

    PYTHONPATH=service .venv/bin/python bench/predictor_cost.py                # against main
    PYTHONPATH=service .venv/bin/python bench/predictor_cost.py --against REF  # any git ref

The optimizer's screen scores every (type, B, T) of a request at several replica counts with
``tail_at``; reports use ``predict_plans``. This script builds the same kind of grid for each
scenario of ``bench/scenarios.py`` (B = powers of two and their 1.5x midpoints up to the cap,
T = 0 and 16 geometric points from 0.02*SLO to SLO, N = 1, 2, 4, 8, 16), and times both entry
points on the kernel of this tree and on ``_batchsim.c`` of ``--against``, compiled into a
temporary folder. Times are thread CPU time (other processes on the 2-core machine inflate
wall time, not this), interleaved between the two kernels, and the minimum over ``--repeats``
passes is kept. Writes bench/results/predictor_cost.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import scenarios as scen  # noqa: E402
from servewise.core import _batchsim, queueing  # type: ignore[attr-defined]  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "predictor_cost.json"
REPLICAS = (1, 2, 4, 8, 16)


def build_kernel(ref: str, folder: Path) -> ModuleType:
    """Compile ``ref``'s _batchsim.c into ``folder`` and load it under another module name."""
    source = subprocess.run(  # noqa: S603
        ["git", "show", f"{ref}:service/servewise/core/_batchsim.c"],  # noqa: S607
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    c_file = folder / "_batchsim.c"
    c_file.write_text(source)
    library = folder / ("_batchsim" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(  # noqa: S603
        [  # noqa: S607
            "cc",
            "-O2",
            "-shared",
            "-fPIC",
            f"-I{sysconfig.get_paths()['include']}",
            f"-I{np.get_include()}",
            str(c_file),
            "-o",
            str(library),
            "-lm",
        ],
        check=True,
    )
    spec = importlib.util.spec_from_file_location("against._batchsim", library)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {library}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plan_grids(count: int, seed: int) -> list[dict[str, Any]]:
    """Per scenario: its service tables and the screen-like grid of plans."""
    grids = []
    for sc in scen.generate(count, seed):
        caps = [c.max_batch_size for c in sc.candidates]
        tables = queueing.ServiceTables.build([c.profile() for c in sc.candidates], caps)
        delays = [0.0, *(np.geomspace(0.02, 1.0, 16) * sc.slo_ms)]
        rows = []
        for k, cap in enumerate(caps):
            sizes = sorted(
                {1 << i for i in range(cap.bit_length()) if (1 << i) <= cap}
                | {3 << i for i in range(cap.bit_length()) if (3 << i) <= cap}
            )
            rows += [(k, b, t, n) for b in sizes for t in delays for n in REPLICAS]
        grid = np.array(rows, dtype=np.float64)
        grids.append(
            {
                "tables": tables,
                "kind": grid[:, 0].astype(np.int64),
                "b": grid[:, 1].astype(np.int64),
                "t": np.ascontiguousarray(grid[:, 2]),
                "n": grid[:, 3].astype(np.int64),
                "rate_per_s": sc.rate_per_s,
                "arrival_cv": sc.arrival_cv,
                "slo_ms": sc.slo_ms,
            }
        )
    return grids


def seconds(kernel: ModuleType, entry: str, grid: dict[str, Any]) -> float:
    plans = len(grid["kind"])
    levels = np.array([0.99]) if entry == "predict_plans" else np.array([grid["slo_ms"]])
    out, mean, batch, util = np.empty(plans), np.empty(plans), np.empty(plans), np.empty(plans)
    tables = grid["tables"]
    start = time.thread_time()
    getattr(kernel, entry)(
        tables.service_ms,
        tables.throughput,
        tables.service_ms.shape[1],
        grid["kind"],
        grid["b"],
        grid["t"],
        grid["n"],
        float(grid["rate_per_s"]),
        float(grid["arrival_cv"]),
        levels,
        out,
        mean,
        batch,
        util,
    )
    return time.thread_time() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", default="main", help="git ref of the kernel to compare")
    parser.add_argument("--scenarios", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    grids = plan_grids(args.scenarios, args.seed)
    plans = sum(len(g["kind"]) for g in grids)
    with tempfile.TemporaryDirectory() as folder:
        kernels = {"this_tree": _batchsim, "against": build_kernel(args.against, Path(folder))}
        best: dict[tuple[str, str], float] = {}
        for _ in range(args.repeats):
            for entry in ("tail_at", "predict_plans"):
                for name, kernel in kernels.items():
                    total = sum(seconds(kernel, entry, g) for g in grids)
                    best[(name, entry)] = min(best.get((name, entry), float("inf")), total)
    head = subprocess.run(  # noqa: S603
        ["git", "rev-parse", "HEAD", args.against],  # noqa: S607
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    result: dict[str, Any] = {
        "benchmark": "predictor_cost",
        "this_tree_head": head[0] if head else None,
        "against": args.against,
        "against_commit": head[1] if len(head) > 1 else None,
        "scenarios": args.scenarios,
        "plans": plans,
        "repeats": args.repeats,
        "ns_per_plan": {},
    }
    print(f"{plans} plans over {args.scenarios} scenarios, min of {args.repeats} passes")
    print(f"{'entry point':16s} {'this tree':>12s} {args.against:>12s} {'ratio':>7s}")
    for entry in ("tail_at", "predict_plans"):
        mine = best[("this_tree", entry)] / plans * 1e9
        theirs = best[("against", entry)] / plans * 1e9
        result["ns_per_plan"][entry] = {
            "this_tree": mine,
            "against": theirs,
            "ratio": mine / theirs,
        }
        print(f"{entry:16s} {mine:10.0f}ns {theirs:10.0f}ns {mine / theirs:7.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
