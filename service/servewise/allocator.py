"""Keep large numpy buffers in the C heap between calls instead of returning them to the OS.

A search simulates runs of 20,000 to 2,000,000 requests, each with a few arrays of 8 bytes per
request (arrivals, latencies, the kernel's clocks). glibc serves such sizes with mmap and gives
them back on free, so every run faulted in and zeroed its pages again: about 200 page faults
per OptimizeBatch call, and a sixth of the time of a real-time confirmation (perf: clear_page,
exc_page_fault). With the thresholds raised they come from the heap and are reused.

The cost is memory held after a large call: free memory at the heap's top is kept up to
``TRIM_THRESHOLD_BYTES`` before it is returned. Small objects (Python's own allocator) are not
affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "keep_large_buffers"]

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
# Below glibc's 32 MiB ceiling for this setting on 64-bit and its 64 MiB per-thread heaps:
# buffers of up to 4M float64 values (a 2M-request run's arrays) stay in the heap.
MMAP_THRESHOLD_BYTES: Final = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES: Final = 128 * 1024 * 1024


def keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where there is no
    glibc ``mallopt`` (another C library: nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
