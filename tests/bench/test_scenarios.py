"""The benchmark scenario generator is deterministic, in range and faithful to the real data."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import scenarios  # noqa: E402

SHARED_DATA = Path(os.environ.get("SERVEWISE_DATA_DIR", "/work/shared/data"))
COUNT = 40


@pytest.fixture(scope="module")
def generated() -> list[scenarios.Scenario]:
    return scenarios.generate(COUNT, seed=2026)


def test_same_seed_gives_identical_scenarios(generated: list[scenarios.Scenario]) -> None:
    """Two runs with one seed produce the same scenarios, and scenario i ignores the count."""
    again = scenarios.generate(COUNT, seed=2026)
    assert [s.to_json() for s in again] == [s.to_json() for s in generated]
    assert scenarios.generate(8, seed=2026)[7].to_json() == generated[7].to_json()
    assert scenarios.generate(3, seed=7)[0].to_json() != generated[0].to_json()


def test_scenarios_are_in_range(generated: list[scenarios.Scenario]) -> None:
    """Rates, SLOs, CVs, type counts and replica estimates stay inside the documented ranges."""
    lo_rate, hi_rate = scenarios.RATE_RANGE_PER_S
    lo_slo, hi_slo = scenarios.SLO_RANGE_MS
    for sc in generated:
        assert lo_rate <= sc.rate_per_s <= hi_rate, sc.id
        assert lo_slo <= sc.slo_ms <= hi_slo, sc.id
        assert sc.arrival_cv == 1.0 or 2.0 <= sc.arrival_cv <= 4.0, sc.id
        assert 1 <= len(sc.candidates) <= 4, sc.id
        assert len({c.name for c in sc.candidates}) == len(sc.candidates), sc.id
        assert 1 <= sc.estimated_replicas <= scenarios.MAX_ESTIMATED_REPLICAS, sc.id
        fastest = min(c.s1_ms() for c in sc.candidates)
        slack = scenarios.TIGHT_SLACK[0] if sc.tight else scenarios.SLO_SLACK
        assert sc.slo_ms >= fastest * slack * (1 - 1e-9), sc.id
        for c in sc.candidates:
            assert c.price_per_hour > 0
            assert 1 <= c.max_batch_size <= c.batch_sizes[-1]
            c.candidate()  # builds core types without error


def test_mix_covers_the_requested_kinds(generated: list[scenarios.Scenario]) -> None:
    """The set mixes measured, linear, capped, tight, Poisson and bursty scenarios."""
    kinds = {sc.kind for sc in generated}
    assert kinds == {"measured", "mixed", "synthetic"}
    assert sum(sc.tight for sc in generated) >= 2
    assert any(sc.arrival_cv == 1.0 for sc in generated)
    assert any(sc.arrival_cv > 1.0 for sc in generated)
    assert any(c.memory_cap is not None for sc in generated for c in sc.candidates)
    assert max(sc.rate_per_s for sc in generated) / min(sc.rate_per_s for sc in generated) > 100


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="shared data directory not present")
def test_embedded_profiles_and_prices_match_the_shared_data() -> None:
    """The copied p99 latencies and on-demand prices equal /work/shared/data's."""
    profiles = {p["id"]: p for p in json.loads((SHARED_DATA / "profiles.json").read_text())}
    for pid, (hardware, _folder, table, p99) in scenarios.REAL_PROFILES.items():
        entry = profiles[pid]
        assert entry["hardware_key"] == hardware
        assert entry["source_table"] == table
        assert tuple(p["latency_ms_p99"] for p in entry["points"]) == p99
    prices = {
        i["instance_type"]: i
        for i in json.loads((SHARED_DATA / "prices.json").read_text())["instances"]
    }
    for name, (hardware, price) in scenarios.INSTANCES.items():
        assert math.isclose(prices[name]["on_demand_usd_per_hour"], price)
        assert hardware in prices[name]["profile_hardware_keys"]
