"""Seeded generator of realistic OptimizeBatch scenarios for the benchmarks.

A scenario is one model served at one arrival rate under one p99 SLO, with 1-4 candidate
instance types to choose from. Scenario ``i`` of seed ``s`` depends only on ``(s, i)``, so the
first 8 scenarios of a ``--quick`` run are the first 8 of the full run.

Where the numbers come from
---------------------------
* Measured latency profiles (``REAL_PROFILES``): NVIDIA DeepLearningExamples PyTorch READMEs,
  ResNet-50 v1.5 and ResNeXt-101 32x4d inference latency tables on V100 16GB (DGX-1) and T4,
  FP32 and AMP, batch 1-256. As the service time s(b) of a batch we use the **p99** latency of
  one batch of that size (``latency_ms_p99``): the tables' averages are inflated by warm-up from
  batch 16-32 up, and p99 is the conservative choice. Copied from
  /work/shared/data/profiles.json (see its README); ``tests/bench/test_scenarios.py`` checks the
  copy against that file when it is present.
* Prices (``INSTANCES``): AWS on-demand USD/hour, us-east-1, read from the SkyPilot catalog
  (skypilot-org/skypilot-catalog catalogs/v8/aws/vms.csv at commit
  00148f2af3672e2229b4f7bf8157d5a3f36e3c35), copied from /work/shared/data/prices.json. Only
  single-GPU (or CPU) instance types are used, so one replica is one instance. Measured profiles
  run on the instance types whose ``profile_hardware_keys`` name their GPU (t4: g4dn.xlarge and
  g5g.2xlarge; v100-16gb: p3.2xlarge).
* Linear profiles ``s(b) = base + per_item * b`` (``kind="linear"``) are **synthetic**: no
  measured profile exists for A10G, H100 or the CPU instance. Their prices are real; their
  latencies are drawn (for mixed scenarios, scaled from the same model's measured T4 profile)
  so that scenarios cover a wide range of batching benefit (per_item/base ratio).

Ranges: rate log-uniform in [0.5, 50000] req/s (redrawn when the cheapest plan would need more
than ~150 replicas); p99 SLO in [5 ms, 2 s], always above s(1) of the fastest candidate with
slack (>= 1.25x), except the deliberately tight scenarios (1.08-1.2x s(1)); arrivals Poisson
(cv 1) or bursty (cv 2-4).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from servewise.core.model import Slo, Workload
from servewise.core.profiles import Candidate, InstanceType, LatencyProfile

RATE_RANGE_PER_S = (0.5, 50_000.0)
SLO_RANGE_MS = (5.0, 2_000.0)
SLO_PERCENTILE = 99.0
# SLO >= this multiple of the fastest candidate's s(1) (ordinary scenarios) ...
SLO_SLACK = 1.25
# ... and in this range of multiples for the deliberately tight ones.
TIGHT_SLACK = (1.08, 1.20)
# Scenario indices i with i % TIGHT_EVERY == TIGHT_AT are tight: 3, 17, 31 of the first 40.
TIGHT_EVERY = 14
TIGHT_AT = 3
# Redraw the rate when the cheapest plan's estimated replica count exceeds this.
MAX_ESTIMATED_REPLICAS = 150
BURSTY_CV_RANGE = (2.0, 4.0)

PROFILE_SOURCE = (
    "NVIDIA/DeepLearningExamples PyTorch/Classification/ConvNets/{model}/README.md, "
    "table '{table}', latency_ms_p99 per batch (via /work/shared/data/profiles.json)"
)
PRICE_SOURCE = (
    "AWS on-demand us-east-1, skypilot-org/skypilot-catalog catalogs/v8/aws/vms.csv @ "
    "00148f2af3672e2229b4f7bf8157d5a3f36e3c35 (via /work/shared/data/prices.json)"
)

_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# id -> (hardware_key, README folder, source table, p99 latency ms per batch in _BATCHES order)
REAL_PROFILES: dict[str, tuple[str, str, str, tuple[float, ...]]] = {
    "dle-pt-resnet-50-v1-5-v100-16gb-fp32": (
        "v100-16gb",
        "resnet50v1.5",
        "Inference performance: NVIDIA DGX-1 (1x V100 16GB) / FP32 Inference Latency",
        (11.73, 12.89, 11.75, 13.12, 15.97, 28.67, 53.71, 104.34, 202.88),
    ),
    "dle-pt-resnet-50-v1-5-v100-16gb-amp": (
        "v100-16gb",
        "resnet50v1.5",
        "Inference performance: NVIDIA DGX-1 (1x V100 16GB) / Mixed Precision Inference Latency",
        (14.36, 15.19, 15.68, 15.6, 16.26, 18.53, 21.93, 40.1, 80.08),
    ),
    "dle-pt-resnet-50-v1-5-t4-fp32": (
        "t4",
        "resnet50v1.5",
        "Inference performance: NVIDIA T4 / FP32 Inference Latency",
        (16.71, 16.99, 18.03, 22.9, 40.23, 77.28, 153.02, 305.13, 625.21),
    ),
    "dle-pt-resnet-50-v1-5-t4-amp": (
        "t4",
        "resnet50v1.5",
        "Inference performance: NVIDIA T4 / Mixed Precision Inference Latency",
        (20.0, 18.73, 19.05, 19.43, 20.62, 28.97, 56.11, 110.41, 222.94),
    ),
    "dle-pt-resnext-101-32x4d-v100-16gb-fp32": (
        "v100-16gb",
        "resnext101-32x4d",
        "Inference performance: NVIDIA DGX-1 (1x V100 16GB) / FP32 Inference Latency",
        (22.0, 22.77, 28.0, 27.75, 40.65, 71.35, 128.64, 243.63, 480.42),
    ),
    "dle-pt-resnext-101-32x4d-v100-16gb-amp": (
        "v100-16gb",
        "resnext101-32x4d",
        "Inference performance: NVIDIA DGX-1 (1x V100 16GB) / Mixed Precision Inference Latency",
        (27.82, 27.87, 27.95, 28.3, 29.47, 32.19, 41.08, 76.08, 146.52),
    ),
    "dle-pt-resnext-101-32x4d-t4-fp32": (
        "t4",
        "resnext101-32x4d",
        "Inference performance: NVIDIA T4 / FP32 Inference Latency",
        (24.58, 26.21, 30.94, 49.91, 94.16, 179.07, 362.32, 752.45, 1583.43),
    ),
    "dle-pt-resnext-101-32x4d-t4-amp": (
        "t4",
        "resnext101-32x4d",
        "Inference performance: NVIDIA T4 / Mixed Precision Inference Latency",
        (29.41, 30.97, 29.38, 29.61, 31.14, 56.37, 109.83, 216.3, 431.46),
    ),
}

# instance type -> (hardware key, on-demand USD/hour). Source: PRICE_SOURCE.
INSTANCES: dict[str, tuple[str, float]] = {
    "g4dn.xlarge": ("t4", 0.526),
    "g5g.2xlarge": ("t4", 0.556),
    "p3.2xlarge": ("v100-16gb", 3.06),
    "g5.xlarge": ("a10g", 1.006),
    "p5.4xlarge": ("h100", 6.88),
    "m8i.large": ("cpu-2vcpu", 0.10584),
}

# Instance types that run measured profiles, by hardware key.
_REAL_HOSTS = {"t4": ("g4dn.xlarge", "g5g.2xlarge"), "v100-16gb": ("p3.2xlarge",)}
_MODELS = {"resnet50": "dle-pt-resnet-50-v1-5", "resnext101": "dle-pt-resnext-101-32x4d"}

# Synthetic linear hardware classes, relative to an A10G (base u, per_item u*r):
# instance -> (base multiplier range, per_item multiplier range, profile max batch choices).
_LINEAR_CLASSES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[int, ...]]] = {
    "m8i.large": ((1.0, 3.0), (10.0, 40.0), (16, 32, 64)),
    "g4dn.xlarge": ((1.2, 2.0), (1.8, 3.0), (64, 128, 256, 512)),
    "g5.xlarge": ((1.0, 1.0), (1.0, 1.0), (128, 256, 512, 1024)),
    "p3.2xlarge": ((0.9, 1.3), (0.8, 1.2), (128, 256, 512)),
    "p5.4xlarge": ((0.3, 0.5), (0.15, 0.3), (256, 512, 1024)),
}
_MEMORY_CAPS = (4, 8, 16, 32, 64, 128)
_MEMORY_CAP_PROBABILITY = 0.3


@dataclass(frozen=True)
class CandidateSpec:
    """One candidate instance type with the model's profile on it (JSON-friendly)."""

    name: str
    instance_type: str
    price_per_hour: float
    hardware: str
    kind: str  # "measured" or "linear"
    profile_source: str
    batch_sizes: tuple[int, ...]
    latencies_ms: tuple[float, ...]
    memory_cap: int | None = None
    linear_base_ms: float | None = None
    linear_per_item_ms: float | None = None

    def profile(self) -> LatencyProfile:
        return LatencyProfile(self.batch_sizes, self.latencies_ms)

    def candidate(self) -> Candidate:
        return Candidate(
            InstanceType(self.name, self.price_per_hour, self.memory_cap), self.profile()
        )

    @property
    def max_batch_size(self) -> int:
        top = self.batch_sizes[-1]
        return top if self.memory_cap is None else min(top, self.memory_cap)

    def s1_ms(self) -> float:
        return (
            self.latencies_ms[0] if self.batch_sizes[0] == 1 else self.profile().service_time_ms(1)
        )


@dataclass(frozen=True)
class Scenario:
    index: int
    seed: int
    kind: str  # "measured", "mixed" or "synthetic"
    rate_per_s: float
    arrival_cv: float
    slo_ms: float
    tight: bool
    candidates: tuple[CandidateSpec, ...]
    estimated_replicas: int
    notes: tuple[str, ...] = field(default=())

    @property
    def id(self) -> str:
        return f"s{self.seed}-{self.index:03d}"

    def workload(self) -> Workload:
        return Workload(self.rate_per_s, self.arrival_cv)

    def slo(self) -> Slo:
        return Slo(self.slo_ms, SLO_PERCENTILE)

    def core_candidates(self) -> list[Candidate]:
        return [c.candidate() for c in self.candidates]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["id"] = self.id
        return data


def _loguniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def _maybe_cap(rng: np.random.Generator, profile_max: int) -> int | None:
    if rng.random() >= _MEMORY_CAP_PROBABILITY:
        return None
    caps = [c for c in _MEMORY_CAPS if c < profile_max]
    return int(rng.choice(caps)) if caps else None


def _measured(rng: np.random.Generator, profile_id: str, host: str) -> CandidateSpec:
    hardware, folder, table, p99 = REAL_PROFILES[profile_id]
    precision = profile_id.rsplit("-", 1)[1]
    model = "resnet50" if "resnet-50" in profile_id else "resnext101"
    return CandidateSpec(
        name=f"{host}/{model}-{precision}",
        instance_type=host,
        price_per_hour=INSTANCES[host][1],
        hardware=hardware,
        kind="measured",
        profile_source=f"{profile_id}: " + PROFILE_SOURCE.format(model=folder, table=table),
        batch_sizes=_BATCHES,
        latencies_ms=p99,
        memory_cap=_maybe_cap(rng, _BATCHES[-1]),
    )


def _linear(
    rng: np.random.Generator, instance: str, base_ms: float, per_item_ms: float, note: str
) -> CandidateSpec:
    top = int(rng.choice(_LINEAR_CLASSES[instance][2]))
    profile = LatencyProfile.linear(base_ms, per_item_ms, top)
    return CandidateSpec(
        name=f"{instance}/linear",
        instance_type=instance,
        price_per_hour=INSTANCES[instance][1],
        hardware=INSTANCES[instance][0],
        kind="linear",
        profile_source=f"synthetic linear s(b)={base_ms:.4g}+{per_item_ms:.4g}*b ms ({note})",
        batch_sizes=profile.batch_sizes,
        latencies_ms=profile.latencies_ms,
        memory_cap=_maybe_cap(rng, top),
        linear_base_ms=base_ms,
        linear_per_item_ms=per_item_ms,
    )


def _measured_options() -> list[tuple[str, str]]:
    """(profile id, host) pairs: every measured profile on every instance with its GPU."""
    return [(pid, host) for pid, (hw, *_rest) in REAL_PROFILES.items() for host in _REAL_HOSTS[hw]]


def _build_candidates(
    rng: np.random.Generator, kind: str, n_types: int, slo_target_ms: float
) -> list[CandidateSpec]:
    if kind == "synthetic":
        unit = slo_target_ms / _loguniform(rng, 1.5, 30.0)  # A10G base latency
        ratio = _loguniform(rng, 0.003, 3.0)  # per_item / base on the A10G
        instances = list(rng.choice(list(_LINEAR_CLASSES), size=n_types, replace=False))
        specs = []
        for inst in instances:
            (b_lo, b_hi), (p_lo, p_hi), _ = _LINEAR_CLASSES[inst]
            base = unit * rng.uniform(b_lo, b_hi)
            per_item = unit * ratio * rng.uniform(p_lo, p_hi)
            specs.append(_linear(rng, inst, base, per_item, f"per_item/base {per_item / base:.3g}"))
        return specs

    model = str(rng.choice(list(_MODELS)))
    options = [(pid, host) for pid, host in _measured_options() if pid.startswith(_MODELS[model])]
    n_measured = n_types if kind == "measured" else int(rng.integers(1, n_types))
    picks = rng.choice(len(options), size=min(n_measured, len(options)), replace=False)
    specs = [_measured(rng, *options[int(i)]) for i in picks]
    if kind == "mixed":
        # Scale synthetic A10G / H100 / CPU profiles from this model's measured T4 AMP profile.
        t4 = REAL_PROFILES[f"{_MODELS[model]}-t4-amp"][3]
        ref_base = t4[0]
        ref_slope = (t4[-1] - t4[0]) / (_BATCHES[-1] - 1)
        factors = {
            "g5.xlarge": ((0.5, 0.8), (0.3, 0.6)),
            "p5.4xlarge": ((0.25, 0.45), (0.08, 0.2)),
            "m8i.large": ((0.1, 0.4), (15.0, 50.0)),
        }
        extra = rng.choice(list(factors), size=n_types - len(specs), replace=False)
        for inst in extra:
            (b_lo, b_hi), (p_lo, p_hi) = factors[str(inst)]
            base = ref_base * rng.uniform(b_lo, b_hi)
            per_item = ref_slope * rng.uniform(p_lo, p_hi)
            specs.append(
                _linear(rng, str(inst), base, per_item, f"scaled from measured {model} T4 AMP")
            )
    return specs


def _scale_linear(specs: list[CandidateSpec], factor: float) -> list[CandidateSpec]:
    out = []
    for s in specs:
        if s.kind != "linear":
            out.append(s)
            continue
        assert s.linear_base_ms is not None
        assert s.linear_per_item_ms is not None
        base, per_item = s.linear_base_ms * factor, s.linear_per_item_ms * factor
        prof = LatencyProfile.linear(base, per_item, s.batch_sizes[-1])
        out.append(
            CandidateSpec(
                **{
                    **asdict(s),
                    "batch_sizes": prof.batch_sizes,
                    "latencies_ms": prof.latencies_ms,
                    "linear_base_ms": base,
                    "linear_per_item_ms": per_item,
                    "profile_source": s.profile_source.replace(
                        "synthetic linear", f"synthetic linear (x{factor:.3g})"
                    ),
                }
            )
        )
    return out


def peak_throughput_per_s(spec: CandidateSpec, slo_ms: float) -> float:
    """Throughput of one replica at the largest batch that still leaves room in the SLO.

    A rough sizing helper for the generator (batches of at most 60% of the SLO), not the
    optimizer's answer.
    """
    prof = spec.profile()
    best = 0.0
    for b in range(1, spec.max_batch_size + 1):
        s = prof.service_time_ms(b)
        if s <= 0.6 * slo_ms or b == 1:
            best = max(best, b / s * 1000.0)
    return best


def estimated_replicas(
    specs: tuple[CandidateSpec, ...] | list[CandidateSpec], rate: float, slo_ms: float
) -> int:
    """Replicas of the cheapest candidate under the rough sizing rule (85% utilisation)."""
    best_cost, best_n = math.inf, 0
    for spec in specs:
        if spec.s1_ms() > slo_ms:
            continue
        n = max(1, math.ceil(rate / (0.85 * peak_throughput_per_s(spec, slo_ms))))
        cost = n * spec.price_per_hour
        if cost < best_cost:
            best_cost, best_n = cost, n
    return best_n


def make_scenario(seed: int, index: int) -> Scenario:
    """Scenario ``index`` of generator ``seed``; depends on nothing else."""
    rng = np.random.default_rng([seed, index])
    tight = index % TIGHT_EVERY == TIGHT_AT
    notes: list[str] = []
    kind = str(rng.choice(["measured", "mixed", "synthetic"], p=[0.35, 0.35, 0.30]))
    slo_target = _loguniform(rng, *SLO_RANGE_MS)
    n_types = int(rng.integers(1, 5))
    if kind != "synthetic" and slo_target < SLO_SLACK * 12.0:
        kind = "synthetic"  # measured profiles start at s(1) = 11.7 ms
    if kind == "mixed" and n_types == 1:
        n_types = 2
    specs = _build_candidates(rng, kind, n_types, slo_target)
    s1_min = min(s.s1_ms() for s in specs)
    if tight:
        slo = s1_min * rng.uniform(*TIGHT_SLACK)
        notes.append(f"tight: SLO {slo / s1_min:.3f} x fastest s(1)")
    else:
        slo = max(slo_target, SLO_SLACK * s1_min)
    if slo < SLO_RANGE_MS[0] or slo > SLO_RANGE_MS[1]:
        target = min(max(slo, SLO_RANGE_MS[0]), SLO_RANGE_MS[1])
        if all(s.kind == "linear" for s in specs):
            specs = _scale_linear(specs, target / slo)
        slo = target
    arrival_cv = 1.0 if (tight or rng.random() < 0.5) else float(rng.uniform(*BURSTY_CV_RANGE))
    rate = _loguniform(rng, *RATE_RANGE_PER_S)
    for _ in range(100):
        if estimated_replicas(specs, rate, slo) <= MAX_ESTIMATED_REPLICAS:
            break
        rate = _loguniform(rng, *RATE_RANGE_PER_S)
    else:
        rate = RATE_RANGE_PER_S[0]
    return Scenario(
        index=index,
        seed=seed,
        kind=kind,
        rate_per_s=float(rate),
        arrival_cv=float(arrival_cv),
        slo_ms=float(slo),
        tight=tight,
        candidates=tuple(specs),
        estimated_replicas=estimated_replicas(specs, rate, slo),
        notes=tuple(notes),
    )


def generate(count: int = 40, seed: int = 2026) -> list[Scenario]:
    """The first ``count`` scenarios of generator ``seed``."""
    return [make_scenario(seed, i) for i in range(count)]


def describe(sc: Scenario) -> str:
    types = ", ".join(
        f"{c.name} ${c.price_per_hour:g}/h s(1)={c.s1_ms():.3g}ms Bmax={c.max_batch_size}"
        for c in sc.candidates
    )
    return (
        f"{sc.id} {sc.kind:9s} rate={sc.rate_per_s:.4g}/s cv={sc.arrival_cv:.2f} "
        f"SLO p99<={sc.slo_ms:.4g}ms{' TIGHT' if sc.tight else ''} [{types}]"
    )


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    for scenario in generate(n):
        print(describe(scenario), "estN", scenario.estimated_replicas)
