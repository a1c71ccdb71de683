"""The large fuzz run: tests/test_fuzz.py at 10,000 examples against a real server.

Run (from the repo root)::

    PYTHONPATH=service .venv/bin/python bench/fuzz.py                  # 10,000 examples
    PYTHONPATH=service .venv/bin/python bench/fuzz.py --examples 1000

The fuzzing itself is the test (one code path for CI's small run and this large one): hypothesis
mutates valid requests of every RPC, the Control stream included (edge numbers and strings,
inflated repeated fields, empty messages, random bytes), sends each to ``servewise serve`` on a
SQLite file, and asserts that no status is INTERNAL or UNKNOWN, that a rejected request (or a
read-only RPC, or a stream that got no decision) leaves the store byte for byte unchanged, and
that health answers SERVING at the end. This script runs it with ``SERVEWISE_FUZZ_EXAMPLES``
and ``SERVEWISE_FUZZ_REPORT`` set, then writes bench/results/fuzz.json (requests and stream
messages sent, statuses per RPC, stream events, state checks, the pytest outcome) and prints a
table. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.harness import RESULTS, SERVICE_ROOT, load_average  # noqa: E402
from bench.plan_quality import source_info  # noqa: E402

DEFAULT_OUT = RESULTS / "fuzz.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report_path = Path(tmp) / "report.json"
        env = {
            **os.environ,
            "SERVEWISE_FUZZ_EXAMPLES": str(args.examples),
            "SERVEWISE_FUZZ_REPORT": str(report_path),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(SERVICE_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        load_before = load_average()
        started = time.time()
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/test_fuzz.py"]  # fmt: skip
        result = subprocess.run(cmd, cwd=REPO, env=env, check=False)  # noqa: S603
        if not report_path.exists():
            print("the fuzz run wrote no report", file=sys.stderr)
            return result.returncode or 1
        report = json.loads(report_path.read_text())
    doc = {
        "benchmark": "fuzz",
        "command": f"SERVEWISE_FUZZ_EXAMPLES={args.examples} pytest tests/test_fuzz.py",
        "pytest_exit_code": result.returncode,
        "passed": result.returncode == 0,
        **report,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "wall_seconds": round(time.time() - started, 1),
        "source": source_info(),
        "target": ">= 10,000 requests, zero INTERNAL or UNKNOWN, healthy after, no persisted "
        "change by a rejected request",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    codes = sorted(report["statuses"])
    print(f"{'rpc':20s} " + " ".join(f"{c[:12]:>12s}" for c in codes))
    for rpc, counts in report["statuses_by_rpc"].items():
        print(f"{rpc:20s} " + " ".join(f"{counts.get(c, 0):12d}" for c in codes))
    print(
        f"{report['requests_sent']:,} requests ({report['control_stream_messages_sent']:,} "
        f"Control stream messages) in {report['seconds']:.0f} s: INTERNAL/UNKNOWN "
        f"{report['internal_or_unknown']}; {report['state_checks']:,} store snapshots compared "
        f"unchanged; stream events {report['control_events']}; pytest "
        f"{'passed' if result.returncode == 0 else 'FAILED'}"
    )
    where = report.get("optimize_calls_by_where", {})
    print(
        f"OptimizeBatch calls in the server's worker processes {where.get('worker', 0):,.0f}, "
        f"in its threads {where.get('thread', 0):,.0f} (a holder kept "
        f"{report.get('optimize_calls_held_in_flight', 0):,} valid calls in flight beside the "
        f"fuzzed ones; failed: {report.get('holder_failures', [])})"
    )
    print(f"wrote {args.out}")
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
