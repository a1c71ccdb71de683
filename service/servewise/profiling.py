"""``servewise profile``: measure a model's latency and memory against batch size on this machine.

Two kinds of model:

- an ONNX file, run with ONNX Runtime on the CPU (random inputs of each input's type and shape;
  the first dimension of every input is the batch dimension and must be dynamic);
- any importable Python callable ``module:function``, called as ``function(batch_size)`` once
  per timed run (it should run one batch of that many requests; prepare inputs outside the
  timed path, e.g. cached per batch size, and let the warm-up runs absorb first-call costs).

For each batch size (ascending) the runner does ``warmup`` untimed runs, then ``repeats`` timed
ones (``time.perf_counter_ns``), and reports the median (the profile's typical latency), the
p99 and the mean, while a sampling thread watches the process's resident memory. ``memory_bytes``
is the peak RSS during that batch size's runs above the RSS after the model was loaded; ONNX
Runtime's arena keeps what it allocated, so with ascending sizes it is the working memory the
largest batch so far needed. A least-squares line through those points gives the memory fit
(``model_bytes`` = loaded RSS + intercept, ``bytes_per_item`` = slope) that ``plan`` can turn into
an instance's memory cap.

ONNX Runtime, onnx and tqdm are optional (``pip install 'servewise[profile]'``) and imported only
when profiling runs, so ``servewise serve`` never loads them.
"""

from __future__ import annotations

import importlib
import itertools
import os
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from servewise_client.profile_file import MemoryFit, ProfileFile, ProfilePoint

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "BatchRunner",
    "CallableRunner",
    "Measurement",
    "OnnxRunner",
    "ProfilingError",
    "measure",
    "parse_batch_sizes",
    "to_profile_file",
]

DEFAULT_BATCH_SIZES: Final = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_WARMUP: Final = 5
DEFAULT_REPEATS: Final = 30
MAX_BATCH_SIZE: Final = 65_536
RSS_SAMPLE_INTERVAL_S: Final = 0.002

# ONNX tensor element types -> numpy dtypes of the random inputs.
_ONNX_DTYPES: Final = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class ProfilingError(Exception):
    """A model that cannot be loaded or run, or settings that cannot be measured."""


def parse_batch_sizes(text: str) -> list[int]:
    """``"1,2,4,8"`` (explicit, any order, made ascending) or ``"1..64"`` (powers of two from
    the first to at most the second, plus the second).

    Examples
    --------
    >>> parse_batch_sizes("1..64")
    [1, 2, 4, 8, 16, 32, 64]
    >>> parse_batch_sizes("3..20")
    [3, 6, 12, 20]
    >>> parse_batch_sizes("8,1,2")
    [1, 2, 8]
    """
    text = text.strip()
    try:
        if ".." in text:
            low_text, high_text = text.split("..", 1)
            low, high = int(low_text), int(high_text)
            if low < 1 or high < low:
                raise ValueError
            sizes = []
            size = low
            while size < high:
                sizes.append(size)
                size *= 2
            sizes.append(high)
        else:
            sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(
            f"batch sizes must be like 1,2,4,8 or 1..64 (positive, increasing), got {text!r}"
        ) from None
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_BATCH_SIZE:
        raise ValueError(f"batch sizes must be in 1..{MAX_BATCH_SIZE}, got {text!r}")
    return sizes


class BatchRunner(Protocol):
    """Something that can run a batch of a given size."""

    description: str
    metadata: dict[str, Any]

    def prepare(self, batch_size: int) -> Callable[[], object]:
        """A zero-argument callable running one batch of ``batch_size`` (inputs made here)."""
        ...


def _fixed_dims(name: str, shape: Sequence[Any], overrides: dict[str, list[int]]) -> list[int]:
    if name in overrides:
        return overrides[name]
    dims: list[int] = []
    for i, dim in enumerate(shape[1:], start=1):
        if not isinstance(dim, int) or dim < 1:
            raise ProfilingError(
                f"input {name!r} has a symbolic dimension {i} ({dim!r}); give its size with "
                f"--shape {name}=D1,D2,... (every dimension after the batch one)"
            )
        dims.append(dim)
    return dims


class OnnxRunner:
    """Runs an ONNX model with ONNX Runtime's CPU execution provider on random inputs."""

    def __init__(
        self,
        path: str | Path,
        *,
        threads: int = 0,
        shapes: dict[str, list[int]] | None = None,
        seed: int = 0,
    ) -> None:
        try:
            import onnxruntime as ort  # noqa: PLC0415 - optional and heavy: only when profiling
        except ImportError:
            raise ProfilingError(
                "onnxruntime is not installed; pip install 'servewise[profile]'"
            ) from None
        self.path = Path(path)
        if not self.path.is_file():
            raise ProfilingError(f"no such model file: {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: no warnings on stderr
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ProfilingError(f"cannot load {self.path}: {first}") from None
        overrides = shapes or {}
        unknown = set(overrides) - {item.name for item in self._session.get_inputs()}
        if unknown:
            raise ProfilingError(
                f"--shape names no input of the model: {', '.join(sorted(unknown))}"
            )
        self._inputs: list[tuple[str, Any, list[int], Any]] = []
        for item in self._session.get_inputs():
            dtype = _ONNX_DTYPES.get(item.type)
            if dtype is None:
                raise ProfilingError(f"input {item.name!r} has unsupported type {item.type}")
            shape = list(item.shape)
            batch_dim = shape[0] if shape else None
            if not shape:
                raise ProfilingError(f"input {item.name!r} is a scalar: no batch dimension")
            self._inputs.append(
                (item.name, dtype, _fixed_dims(item.name, shape, overrides), batch_dim)
            )
        self._rng = np.random.default_rng(seed)
        self.description = f"{self.path.name} (onnxruntime {ort.__version__}, CPU)"
        self.metadata: dict[str, Any] = {
            "model": str(self.path),
            "runtime": f"onnxruntime {ort.__version__}",
            "provider": "CPUExecutionProvider",
            "threads": threads or "default",
            "inputs": {name: ["batch", *dims] for name, _, dims, _ in self._inputs},
        }

    def prepare(self, batch_size: int) -> Callable[[], object]:
        feeds: dict[str, npt.NDArray[Any]] = {}
        for name, dtype, dims, batch_dim in self._inputs:
            if isinstance(batch_dim, int) and batch_dim > 0 and batch_dim != batch_size:
                raise ProfilingError(
                    f"input {name!r} has a fixed batch dimension {batch_dim}; export the model "
                    "with a dynamic first axis to profile other batch sizes"
                )
            shape = (batch_size, *dims)
            if np.issubdtype(dtype, np.floating):
                feeds[name] = self._rng.standard_normal(shape).astype(dtype)
            elif dtype is np.bool_:
                feeds[name] = self._rng.integers(0, 2, shape).astype(np.bool_)
            else:  # small non-negative integers: valid indices for embeddings and gathers
                feeds[name] = self._rng.integers(0, 2, shape).astype(dtype)
        session = self._session

        def run() -> object:
            return session.run(None, feeds)

        return run


class CallableRunner:
    """Runs ``function(batch_size)`` imported from ``module:function``."""

    def __init__(self, target: str) -> None:
        module_name, sep, attr_path = target.partition(":")
        if not sep or not module_name or not attr_path:
            raise ProfilingError(f"expected MODULE:FUNCTION, got {target!r}")
        # Like `python -m`, let modules in the working directory be found.
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise ProfilingError(f"cannot import {module_name!r}: {exc}") from None
        for part in attr_path.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ProfilingError(f"{module_name!r} has no attribute {attr_path!r}") from None
        if not callable(obj):
            raise ProfilingError(f"{target} is not callable")
        self._function: Callable[[int], object] = obj
        self.description = target
        self.metadata: dict[str, Any] = {"model": target, "runtime": "python callable"}

    def prepare(self, batch_size: int) -> Callable[[], object]:
        function = self._function
        return lambda: function(batch_size)


# --- memory ----------------------------------------------------------------------------------

_PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc), else the peak so far."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


class _RssSampler:
    """Samples RSS on a thread; ``peak`` is the largest value seen since ``reset``."""

    def __init__(self, interval_s: float = RSS_SAMPLE_INTERVAL_S) -> None:
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._peak = current_rss_bytes()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.observe()

    def observe(self) -> None:
        rss = current_rss_bytes()
        with self._lock:
            self._peak = max(self._peak, rss)

    def reset(self) -> None:
        with self._lock:
            self._peak = current_rss_bytes()

    @property
    def peak(self) -> int:
        self.observe()
        with self._lock:
            return self._peak

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- measuring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """The timed runs of one batch size and the memory they used."""

    batch_size: int
    latencies_ms: npt.NDArray[np.float64]
    peak_rss_bytes: int
    memory_bytes: int
    # RSS once the model was loaded, before any run: the base memory_bytes is measured from.
    loaded_rss_bytes: int

    @property
    def median_ms(self) -> float:
        return float(np.median(self.latencies_ms))

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99))

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.latencies_ms))

    @property
    def throughput_per_s(self) -> float:
        return self.batch_size / self.median_ms * 1000.0


class _Progress(Protocol):
    def update(self, n: float = 1) -> object: ...
    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...
    def close(self) -> None: ...


class _NoProgress:
    def update(self, n: float = 1) -> object:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def close(self) -> None:
        return None


@contextmanager
def _progress_bar(total: int, description: str, enabled: bool | None) -> Iterator[_Progress]:
    """A tqdm bar on stderr (``enabled=None``: only when stderr is a terminal)."""
    if enabled is False:
        yield _NoProgress()
        return
    try:
        from tqdm import tqdm  # noqa: PLC0415 - optional
    except ImportError:
        yield _NoProgress()
        return
    bar = tqdm(
        total=total,
        desc=description,
        unit="run",
        file=sys.stderr,
        disable=None if enabled is None else False,
        dynamic_ncols=True,
    )
    try:
        yield bar
    finally:
        bar.close()


def measure(
    runner: BatchRunner,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    *,
    warmup: int = DEFAULT_WARMUP,
    repeats: int = DEFAULT_REPEATS,
    progress: bool | None = None,
) -> list[Measurement]:
    """Time ``runner`` at each batch size (ascending): ``warmup`` untimed runs, then
    ``repeats`` timed ones, sampling memory throughout.

    Raises
    ------
    ValueError
        ``warmup < 0``, ``repeats < 1`` or batch sizes that are not positive and increasing.
    ProfilingError
        The model failed to run (the message names the batch size).
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    sizes = list(batch_sizes)
    if not sizes or sizes[0] < 1 or any(b <= a for a, b in itertools.pairwise(sizes)):
        raise ValueError(f"batch sizes must be positive and increasing, got {sizes}")
    results: list[Measurement] = []
    with (
        _RssSampler() as sampler,
        _progress_bar(len(sizes) * (warmup + repeats), runner.description, progress) as bar,
    ):
        loaded_rss = current_rss_bytes()
        for size in sizes:
            bar.set_postfix_str(f"batch {size}")
            try:
                run = runner.prepare(size)
                sampler.reset()
                for _ in range(warmup):
                    run()
                    bar.update()
                timings = np.empty(repeats, dtype=np.float64)
                for i in range(repeats):
                    start = time.perf_counter_ns()
                    run()
                    timings[i] = (time.perf_counter_ns() - start) / 1e6
                    bar.update()
            except ProfilingError:
                raise
            except Exception as exc:  # whatever the model raises
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ProfilingError(
                    f"batch size {size} failed: {type(exc).__name__}: {first}"
                ) from exc
            peak = sampler.peak
            results.append(
                Measurement(
                    batch_size=size,
                    latencies_ms=timings,
                    peak_rss_bytes=peak,
                    memory_bytes=max(peak - loaded_rss, 0),
                    loaded_rss_bytes=loaded_rss,
                )
            )
    return results


def memory_fit(measurements: Sequence[Measurement]) -> MemoryFit:
    """memory(b) ~= model_bytes + bytes_per_item * b by least squares (slope clipped at 0)."""
    sizes = np.array([m.batch_size for m in measurements], dtype=np.float64)
    memory = np.array([m.memory_bytes for m in measurements], dtype=np.float64)
    if len(sizes) >= 2:
        slope, intercept = np.polyfit(sizes, memory, 1)
    else:
        slope, intercept = memory[0] / sizes[0], 0.0
    slope = max(float(slope), 0.0)
    return MemoryFit(
        model_bytes=int(measurements[0].loaded_rss_bytes + max(float(intercept), 0.0)),
        bytes_per_item=round(slope),
    )


def to_profile_file(
    measurements: Sequence[Measurement],
    runner: BatchRunner,
    *,
    warmup: int,
    repeats: int,
) -> ProfileFile:
    """The profile file for ``measurements`` (median as latency_ms, p99, memory and extras)."""
    points = tuple(
        ProfilePoint(
            batch_size=m.batch_size,
            latency_ms=round(m.median_ms, 6),
            p99_latency_ms=round(m.p99_ms, 6),
            memory_bytes=m.memory_bytes,
            extra={
                "mean_ms": round(m.mean_ms, 6),
                "min_ms": round(float(np.min(m.latencies_ms)), 6),
                "max_ms": round(float(np.max(m.latencies_ms)), 6),
                "throughput_per_s": round(m.throughput_per_s, 3),
                "peak_rss_bytes": m.peak_rss_bytes,
                "runs": len(m.latencies_ms),
            },
        )
        for m in measurements
    )
    metadata = {
        **runner.metadata,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "warmup": warmup,
        "repeats": repeats,
        "latency_ms": "median of the timed runs; p99_latency_ms their 99th percentile",
        "memory_bytes": "peak RSS during the batch size's runs above the RSS once loaded",
    }
    return ProfileFile(points=points, memory=memory_fit(measurements), metadata=metadata)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
