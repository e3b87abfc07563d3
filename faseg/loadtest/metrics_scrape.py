"""The server-side view of a load-test step, from two scrapes of the service's Prometheus ``/metrics``.

A scrape is taken when a step's measurement window opens and another when it closes; their difference
gives what the server did inside the window: per-stage time (``faseg_stage_duration_seconds{stage}``:
decode, queue, infer, postprocess, encode, total), the mean batch size (``faseg_batch_size`` sum / count),
model runs, images, answers by status code and rejections by reason. Stage quantiles are estimated from
the histogram buckets the way Prometheus' ``histogram_quantile`` does (linear inside a bucket), so they
are only as fine as the buckets.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

STAGE_HISTOGRAM = "faseg_stage_duration_seconds"
BATCH_HISTOGRAM = "faseg_batch_size"
REQUESTS_COUNTER = "faseg_requests_total"
REJECTIONS_COUNTER = "faseg_rejections_total"
IMAGES_COUNTER = "faseg_inference_images_total"
BATCHES_COUNTER = "faseg_batches_total"
PROCESS_CPU_COUNTER = "process_cpu_seconds_total"  # only when the server exports process metrics
STAGE_QUANTILES = (50, 99)
MS = 1000.0

LabelSet = tuple[tuple[str, str], ...]


@dataclass
class Snapshot:
    """Every sample of one scrape: ``values[name][labels] = value`` (``le`` kept among the labels)."""

    values: dict[str, dict[LabelSet, float]] = field(default_factory=lambda: defaultdict(dict))

    def get(self, name: str, **labels: str) -> float:
        return self.values.get(name, {}).get(_labelset(labels), 0.0)

    def series(self, name: str) -> dict[LabelSet, float]:
        return self.values.get(name, {})


def _labelset(labels: Mapping[str, str]) -> LabelSet:
    return tuple(sorted(labels.items()))


def parse(text: str) -> Snapshot:
    """Parse Prometheus text exposition format."""
    snapshot = Snapshot()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            snapshot.values[sample.name][_labelset(sample.labels)] = float(sample.value)
    return snapshot


def _delta(before: Snapshot, after: Snapshot, name: str) -> dict[LabelSet, float]:
    """after − before for every series of ``name`` (series new in ``after`` count from 0)."""
    old = before.series(name)
    return {labels: value - old.get(labels, 0.0) for labels, value in after.series(name).items()}


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Quantile ``q`` (0–1) from cumulative ``(upper bound, count)`` buckets, as Prometheus estimates it.
    Above the highest finite bound the answer is that bound; None without observations."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def _stage_breakdown(before: Snapshot, after: Snapshot) -> dict[str, dict[str, float | int | None]]:
    counts = _delta(before, after, STAGE_HISTOGRAM + "_count")
    sums = _delta(before, after, STAGE_HISTOGRAM + "_sum")
    buckets: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for labels, value in _delta(before, after, STAGE_HISTOGRAM + "_bucket").items():
        named = dict(labels)
        buckets[named["stage"]].append((float(named["le"]), value))
    stages: dict[str, dict[str, float | int | None]] = {}
    for labels, count in sorted(counts.items()):
        stage = dict(labels).get("stage", "")
        row: dict[str, float | int | None] = {
            "count": round(count),
            "mean_ms": round(sums.get(labels, 0.0) / count * MS, 3) if count > 0 else None,
        }
        for q in STAGE_QUANTILES:
            value = histogram_quantile(q / 100, buckets.get(stage, []))
            row[f"p{q}_ms"] = round(value * MS, 3) if value is not None else None
        stages[stage] = row
    return stages


def _by_label(delta: dict[LabelSet, float], label: str) -> dict[str, int]:
    totals: dict[str, float] = defaultdict(float)
    for labels, value in delta.items():
        totals[dict(labels).get(label, "")] += value
    return {key: round(value) for key, value in sorted(totals.items()) if round(value)}


def breakdown(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """What the server did between two scrapes."""
    batches = after.get(BATCH_HISTOGRAM + "_count") - before.get(BATCH_HISTOGRAM + "_count")
    batch_images = after.get(BATCH_HISTOGRAM + "_sum") - before.get(BATCH_HISTOGRAM + "_sum")
    result: dict[str, Any] = {
        "stages_ms": _stage_breakdown(before, after),
        "mean_batch_size": round(batch_images / batches, 3) if batches > 0 else None,
        "batches": round(after.get(BATCHES_COUNTER) - before.get(BATCHES_COUNTER)),
        "images": round(after.get(IMAGES_COUNTER) - before.get(IMAGES_COUNTER)),
        "requests_by_code": _by_label(_delta(before, after, REQUESTS_COUNTER), "code"),
        "rejections": _by_label(_delta(before, after, REJECTIONS_COUNTER), "reason"),
    }
    if after.series(PROCESS_CPU_COUNTER):
        result["cpu_seconds"] = round(after.get(PROCESS_CPU_COUNTER) - before.get(PROCESS_CPU_COUNTER), 3)
    return result
