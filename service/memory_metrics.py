"""Process memory in ``/metrics``, for soak runs: where does the resident memory go?

- ``faseg_process_resident_bytes``: the resident set size (``/proc/self/statm``), always reported on Linux;
- with the ``tracemalloc`` setting (``FASEG_TRACEMALLOC=1``): ``faseg_python_heap_bytes`` and
  ``faseg_python_heap_peak_bytes``, the memory Python objects hold as tracemalloc counts it (allocations
  since tracing started, which ``start_tracing`` does before the model is loaded). Resident minus Python heap
  is native memory: the model runtime's arenas, thread stacks, the interpreter itself, and freed memory the
  allocator keeps. Tracing costs CPU on every allocation (often 20–50 % more per request), so it is off
  unless asked for.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STATM = "/proc/self/statm"
# tracemalloc frames kept per allocation: 1 is enough for totals and cheapest.
TRACE_FRAMES = 1


def start_tracing(enabled: bool) -> None:
    if enabled and not tracemalloc.is_tracing():
        tracemalloc.start(TRACE_FRAMES)


def resident_bytes() -> int | None:
    try:
        with open(STATM) as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class MemoryCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        rss = resident_bytes()
        if rss is not None:
            yield GaugeMetricFamily("faseg_process_resident_bytes", "Resident set size of the server", value=rss)
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            yield GaugeMetricFamily(
                "faseg_python_heap_bytes", "Memory held by Python objects (tracemalloc)", value=current
            )
            yield GaugeMetricFamily(
                "faseg_python_heap_peak_bytes", "Peak of faseg_python_heap_bytes (tracemalloc)", value=peak
            )


def register(registry: CollectorRegistry) -> None:
    registry.register(MemoryCollector())
