"""Load-test reports: ``report.json`` (everything), ``report.csv`` (one row per step) and
``latency_throughput.png`` (the latency–throughput curve), plus the environment every recorded run carries
(date, machine, versions).

The JSON shape is versioned (``schema``) and checked by :func:`check_report`; its per-step fields follow
perf_analyzer's report: throughput, client latency percentiles, errors by status, bytes, and the server's
stage breakdown.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from faseg.machine import cpu_name

SCHEMA = "faseg.loadtest/1"
REPORT_JSON = "report.json"
REPORT_CSV = "report.csv"
REPORT_PNG = "latency_throughput.png"
LATENCY_KEYS = ("p50", "p90", "p95", "p99", "max", "mean", "min")
SERVER_STAGES = ("decode", "queue", "infer", "postprocess", "encode", "total")
VERSIONED_PACKAGES = ("faseg", "onnxruntime", "torch", "numpy", "fastapi", "uvicorn", "aiohttp", "httpx")


# --- environment -------------------------------------------------------------------------------------


def package_versions(names: Iterable[str] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Installed versions, read from package metadata (nothing is imported)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def environment() -> dict[str, Any]:
    """Date, machine and versions: what every recorded run carries."""
    now = dt.datetime.now(dt.UTC)
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "date": now.date().isoformat(),
        "time_utc": now.isoformat(timespec="seconds"),
        "machine": {
            "hostname": platform.node(),
            "cpu": cpu_name(),
            "logical_cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": load,
        },
        "python": platform.python_version(),
        "versions": package_versions(),
    }


# --- schema ------------------------------------------------------------------------------------------

_NUMBER = (int, float)
_STEP_FIELDS: dict[str, tuple[type, ...]] = {
    "mode": (str,),
    "concurrency": (int, type(None)),
    "rate": (*_NUMBER, type(None)),
    "duration_s": _NUMBER,
    "requests": (int,),
    "successes": (int,),
    "images_per_s": _NUMBER,
    "requests_per_s": _NUMBER,
    "offered_requests_per_s": _NUMBER,
    "latency_ms": (dict,),
    "errors": (dict,),
    "error_rate": _NUMBER,
    "bytes_sent": (int,),
    "bytes_received": (int,),
    "send_lag_ms_p99": (*_NUMBER, type(None)),
    "warmup_requests": (int,),
    "client": (dict,),
    "server": (dict, type(None)),
}
_TOP_FIELDS: dict[str, tuple[type, ...]] = {
    "schema": (str,),
    "tool": (dict,),
    "environment": (dict,),
    "target": (dict,),
    "settings": (dict,),
    "steps": (list,),
    "summary": (dict,),
}


def _check_fields(where: str, value: Any, fields: dict[str, tuple[type, ...]], problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"{where}: expected an object, got {type(value).__name__}")
        return
    for key, types in fields.items():
        if key not in value:
            problems.append(f"{where}: missing {key!r}")
        elif not isinstance(value[key], types) or isinstance(value[key], bool):
            problems.append(f"{where}.{key}: {type(value[key]).__name__} is not {'/'.join(t.__name__ for t in types)}")


def check_report(report: Any) -> list[str]:
    """Problems with a report's shape (an empty list when it is valid)."""
    problems: list[str] = []
    _check_fields("report", report, _TOP_FIELDS, problems)
    if problems:
        return problems
    if report["schema"] != SCHEMA:
        problems.append(f"report.schema: {report['schema']!r} is not {SCHEMA!r}")
    for index, step in enumerate(report["steps"]):
        where = f"steps[{index}]"
        _check_fields(where, step, _STEP_FIELDS, problems)
        if not isinstance(step, dict):
            continue
        if step.get("mode") not in ("closed", "open"):
            problems.append(f"{where}.mode: {step.get('mode')!r} is not closed/open")
        latency = step.get("latency_ms", {})
        for key in LATENCY_KEYS:
            if key not in latency or not isinstance(latency[key], (*_NUMBER, type(None))):
                problems.append(f"{where}.latency_ms.{key}: missing or not a number")
        ordered = [latency.get(k) for k in ("min", "p50", "p90", "p95", "p99", "max")]
        if all(isinstance(v, _NUMBER) for v in ordered) and ordered != sorted(ordered):
            problems.append(f"{where}.latency_ms: min ≤ p50 ≤ p90 ≤ p95 ≤ p99 ≤ max does not hold: {ordered}")
        for code, count in step.get("errors", {}).items():
            if not isinstance(code, str) or not isinstance(count, int):
                problems.append(f"{where}.errors: {code!r}: {count!r} is not status → count")
        server = step.get("server")
        if isinstance(server, dict):
            for key in ("stages_ms", "mean_batch_size", "batches", "images", "requests_by_code", "rejections"):
                if key not in server:
                    problems.append(f"{where}.server: missing {key!r}")
    for key in ("best_step", "max_images_per_s", "requests", "successes"):
        if key not in report["summary"]:
            problems.append(f"summary: missing {key!r}")
    return problems


def summary(steps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    best = max(range(len(steps)), key=lambda i: steps[i]["images_per_s"], default=None)
    return {
        "best_step": best,
        "max_images_per_s": steps[best]["images_per_s"] if best is not None else 0.0,
        "requests": sum(s["requests"] + s["warmup_requests"] for s in steps),
        "successes": sum(s["successes"] for s in steps),
    }


# --- files -------------------------------------------------------------------------------------------


def step_label(step: dict[str, Any]) -> str:
    return f"c={step['concurrency']}" if step["mode"] == "closed" else f"r={step['rate']:g}/s"


def csv_row(step: dict[str, Any]) -> dict[str, Any]:
    latency = step["latency_ms"]
    server = step.get("server") or {}
    stages = server.get("stages_ms", {})
    row: dict[str, Any] = {
        "mode": step["mode"],
        "concurrency": step["concurrency"],
        "rate": step["rate"],
        "duration_s": step["duration_s"],
        "requests": step["requests"],
        "successes": step["successes"],
        "images_per_s": step["images_per_s"],
        "requests_per_s": step["requests_per_s"],
        **{f"{key}_ms": latency[key] for key in LATENCY_KEYS},
        "error_rate": step["error_rate"],
        "errors": ";".join(f"{code}:{count}" for code, count in step["errors"].items()),
        "client_cpu_percent": step["client"].get("cpu_percent"),
        "client_cpu_ms_per_image": step["client"].get("cpu_ms_per_image"),
        "server_cpu_ms_per_image": server.get("process_cpu_ms_per_image"),
        "mean_batch_size": server.get("mean_batch_size"),
    }
    for stage in SERVER_STAGES:
        row[f"server_{stage}_mean_ms"] = stages.get(stage, {}).get("mean_ms")
    return row


def write_csv(steps: Sequence[dict[str, Any]], path: Path) -> Path:
    rows = [csv_row(step) for step in steps]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["mode"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_plot(steps: Sequence[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Latency (p50, p99) against throughput, and both against the load level. None when matplotlib is
    not installed (it is an optional dependency: ``pip install matplotlib``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    measured = [s for s in steps if s["successes"]]
    fig, (curve, levels) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, marker in (("p50", "o"), ("p99", "^")):
        xs = [s["images_per_s"] for s in measured]
        ys = [s["latency_ms"][key] for s in measured]
        curve.plot(xs, ys, marker=marker, label=f"{key} latency")
    for s in measured:
        curve.annotate(
            step_label(s),
            (s["images_per_s"], s["latency_ms"]["p50"]),
            fontsize=7,
            xytext=(3, -9),
            textcoords="offset points",
        )
    curve.set_xlabel("throughput (images/s)")
    curve.set_ylabel("client latency (ms)")
    curve.set_title("latency vs throughput")
    curve.set_xlim(left=0)
    curve.set_ylim(bottom=0)
    curve.grid(alpha=0.3)
    curve.legend()
    closed = all(s["mode"] == "closed" for s in steps)
    xs = [s["concurrency"] if closed else s["rate"] for s in steps]
    levels.plot(xs, [s["images_per_s"] for s in steps], marker="o", color="tab:green", label="images/s")
    levels.set_xlabel("concurrency" if closed else "offered rate (requests/s)")
    levels.set_ylabel("throughput (images/s)")
    if closed and len(xs) > 1 and min(xs) > 0:
        levels.set_xscale("log", base=2)
        levels.set_xticks(xs, [str(x) for x in xs])
    levels.set_ylim(bottom=0)
    levels.grid(alpha=0.3)
    errors = levels.twinx()
    errors.plot(xs, [100 * s["error_rate"] for s in steps], marker="x", color="tab:red", label="errors %")
    errors.set_ylabel("errors (%)")
    errors.set_ylim(0, max(5.0, 120 * max((s["error_rate"] for s in steps), default=0)))
    levels.set_title("throughput and errors by load")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, str | None]:
    """Write report.json, report.csv and latency_throughput.png into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = report["target"]
    model = (target.get("model") or {}).get("name", "?")
    title = f"{model} at {target['url']} ({report['settings']['mode']} loop, {report['tool']['client']})"
    png = write_plot(report["steps"], out_dir / REPORT_PNG, title)
    files = {
        "json": str(out_dir / REPORT_JSON),
        "csv": str(write_csv(report["steps"], out_dir / REPORT_CSV)),
        "png": str(png) if png else None,
    }
    report["files"] = files
    (out_dir / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    return files
