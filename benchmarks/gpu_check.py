"""The one device check: every CUDA path of FASeg executed on a GPU, in one short run (≤ 6 minutes).

    python3 benchmarks/gpu_check.py --out "$OUT"          # or: make gpu-check (writes build/gpu_check/)

Needs only a python3 with a CUDA build of torch (plus pytest and pytest-timeout; transformers for the HF
peer), and the native libraries built beforehand with ``bash export/plugins/build_cuda.sh`` (``build/cuda``;
they are built with nvcc for sm_80 / sm_90 and need only the driver). No network, no TensorRT. Steps:

1. ``install``: makes ``import faseg`` resolve to this checkout without installing anything (a folder of
   symbolic links on ``PYTHONPATH``; the project's dependencies are not installed). When the python lacks
   pydantic / pydantic-settings (the torch backend's settings need them) and ``--wheels`` holds wheels
   (default ``build/wheels``, fetched by ``benchmarks/gpu_check_wheels.sh``), they are unpacked to a
   temporary folder on ``PYTHONPATH``.
2. ``kernels``: ``pytest tests/model/test_cuda_kernels.py`` with ``FASEG_REQUIRE_CUDA_KERNELS=1`` (a missing
   GPU or kernel library fails instead of skipping; the PyTorch-extension backend, which compiles for
   minutes, only with ``--with-extension``).
3. ``harness``: ``pytest tests/export/test_trt_plugin_harness.py`` (both TensorRT plugins through the
   IPluginV3 calls with enqueue, and the ONNX Runtime CUDA ops where onnxruntime has the CUDA EP).
4. ``bench``: ``benchmarks/bench_gpu.py`` (kernels vs references, torch backend with vs without kernels,
   HF Mask2Former-R50 eager).

Warnings are reported, not errors, in these pytest runs (``-o filterwarnings=default``): the device's package
versions differ from the project's pins. Writes to ``--out``: ``gpu_check.json`` (facts, every step's exit
code, duration, test counts and skip reasons, the benchmark's ratios), ``gpu_check.log`` (all output),
``junit_kernels.xml``, ``junit_harness.xml`` and ``bench_gpu.json``; prints a summary last.

Exit code: 0 every step passed; 1 a step failed; 3 no CUDA device (nothing ran; ``gpu_check.json`` says
``"status": "skipped"`` with the reason).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = {"model": "model", "export": "export", "service": "service"}  # faseg.<name> -> <repo>/<folder>
STEPS = ("kernels", "harness", "bench")
EXIT_OK, EXIT_FAILED, EXIT_NO_CUDA = 0, 1, 3
TIMEOUTS_S = {"kernels": 110, "harness": 75, "bench": 150}  # 335 s at worst + probe and wheels: < 6 minutes
WHEEL_MODULES = ("pydantic", "pydantic_settings")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "gpu_check", help="result folder (e.g. $OUT)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with CUDA torch (default: this one)")
    parser.add_argument("--wheels", type=Path, default=REPO / "build" / "wheels", help="wheels of missing packages")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    parser.add_argument("--with-extension", action="store_true", help="also build and test the PyTorch extension")
    parser.add_argument("--bench-runs", type=int, default=10, help="timed runs per benchmark measurement")
    parser.add_argument(
        "--rehearse", action="store_true", help="run the steps even without a CUDA device (CPU rehearsal of the layout)"
    )
    return parser


class Log:
    """Everything the steps print, in one file; the summary goes to stdout too."""

    def __init__(self, path: Path):
        self.path = path
        path.write_text("")

    def write(self, text: str) -> None:
        with self.path.open("a") as f:
            f.write(text if text.endswith("\n") else text + "\n")


def probe(python: str, env: dict[str, str]) -> dict:
    """Facts about the interpreter and the GPU, from a child process (the same environment the steps get)."""
    code = (
        "import json, platform, torch, faseg.model.ops.cuda_library as lib\n"
        "facts = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
        "         'cuda_available': torch.cuda.is_available(), 'faseg_repo': str(lib.REPO_ROOT)}\n"
        "if facts['cuda_available']:\n"
        "    p = torch.cuda.get_device_properties(0)\n"
        "    facts.update(gpu=p.name, capability=f'{p.major}.{p.minor}', memory_gib=round(p.total_memory / 2**30, 1))\n"
        "print(json.dumps(facts))\n"
    )
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=False)
    if proc.returncode != 0:
        return {"cuda_available": False, "probe_error": proc.stderr.strip().splitlines()[-1:]}
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=name,driver_version", "--format=csv,noheader"]
        facts["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    return facts


def package_shim(root: Path) -> Path:
    """``root/faseg`` laid out like the installed package (pyproject's package-dir): faseg/* plus
    faseg/model, faseg/export, faseg/service as links to the top-level folders."""
    package = root / "faseg"
    package.mkdir(parents=True)
    for entry in (REPO / "faseg").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in PACKAGE_FOLDERS.items():
        (package / name).symlink_to(REPO / folder)
    return root


def install_wheels(python: str, wheels: Path, target: Path, env: dict[str, str], log: Log) -> str:
    """Unpack ``wheels/*.whl`` into ``target`` when the interpreter lacks pydantic / pydantic-settings."""
    missing = [
        m for m in WHEEL_MODULES
        if subprocess.run([python, "-c", f"import {m}"], env=env, capture_output=True, check=False).returncode
    ]  # fmt: skip
    if not missing:
        return "not needed"
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not files:
        return f"{', '.join(missing)} missing and no wheels in {wheels} (benchmarks/gpu_check_wheels.sh fetches them)"
    command = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target",
               str(target), *map(str, files)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    log.write(f"$ {' '.join(command)}\n{proc.stdout}{proc.stderr}")
    if proc.returncode != 0:
        return f"pip install of {len(files)} wheels failed (exit {proc.returncode})"
    return f"installed {len(files)} wheels for {', '.join(missing)}"


def junit_counts(path: Path) -> dict:
    """passed / failed / skipped counts, the failures' names and the distinct skip reasons of a junit file."""
    if not path.is_file():
        return {"error": f"{path.name} not written"}
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failed, reasons = [], set()
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
            failed.append(name)
        elif (skip := case.find("skipped")) is not None:
            counts["skipped"] += 1
            reasons.add(skip.get("message", ""))
        else:
            counts["passed"] += 1
    return {**counts, "failed_tests": failed, "skip_reasons": sorted(reasons)}


def run_step(name: str, command: list[str], env: dict[str, str], log: Log) -> dict:
    log.write(f"\n===== {name}: {' '.join(command)}")
    started = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUTS_S[name])
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = "timeout"
        output = f"{exc.stdout or ''}{exc.stderr or ''}\nTIMEOUT after {TIMEOUTS_S[name]} s"
    log.write(output if isinstance(output, str) else output.decode(errors="replace"))
    return {"step": name, "command": command, "rc": rc, "seconds": round(time.monotonic() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        print(f"gpu_check: unknown step(s) {unknown}; choose from {', '.join(STEPS)}", file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "gpu_check.log")
    report: dict = {"status": "ok", "repo": str(REPO), "steps": []}
    with tempfile.TemporaryDirectory(prefix="faseg-gpu-check-") as tmp:
        env = dict(os.environ, PYTHONUNBUFFERED="1", FASEG_REQUIRE_CUDA_KERNELS="1")
        site = package_shim(Path(tmp) / "shim")
        wheel_target = Path(tmp) / "wheels"
        env["PYTHONPATH"] = os.pathsep.join(
            [str(site), str(wheel_target), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        report["install"] = {"faseg": f"PYTHONPATH shim {site} -> {REPO} (no pip install, no dependencies)"}
        report["facts"] = probe(args.python, env)
        if "probe_error" in report["facts"]:
            report.update(status="failed", reason=f"{args.python} cannot import torch and faseg: "
                          f"{report['facts']['probe_error']}")  # fmt: skip
        elif not report["facts"].get("cuda_available") and not args.rehearse:
            report.update(
                status="skipped",
                reason=f"no CUDA device (torch {report['facts'].get('torch', '?')} sees none); nothing ran",
            )
        else:
            if args.rehearse:
                report["rehearsal"] = True
                env.pop("FASEG_REQUIRE_CUDA_KERNELS")  # without a GPU the GPU tests skip instead of failing
            report["install"]["wheels"] = install_wheels(args.python, args.wheels, wheel_target, env, log)
            pytest = [
                args.python,
                "-m",
                "pytest",
                "-q",
                "-rs",
                "-p",
                "no:cacheprovider",
                "-o",
                "filterwarnings=default",
            ]
            commands = {
                "kernels": [*pytest, "tests/model/test_cuda_kernels.py", f"--junitxml={out / 'junit_kernels.xml'}",
                            *([] if args.with_extension else ["-k", "not extension"])],
                "harness": [*pytest, "tests/export/test_trt_plugin_harness.py",
                            f"--junitxml={out / 'junit_harness.xml'}"],
                "bench": [args.python, "benchmarks/bench_gpu.py", "--out", str(out), "--no-save",
                          "--runs", str(args.bench_runs)],
            }  # fmt: skip
            for name in steps:
                step = run_step(name, commands[name], env, log)
                if name != "bench":
                    step["tests"] = junit_counts(out / f"junit_{name}.xml")
                else:
                    bench_file = out / "bench_gpu.json"
                    bench = json.loads(bench_file.read_text()) if bench_file.is_file() else {}
                    step["bench"] = {k: bench.get(k) for k in ("status", "reason", "ratios", "seconds")}
                report["steps"].append(step)
            if any(s["rc"] != 0 for s in report["steps"]):
                report["status"] = "failed"
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(summary(report, out)))
    if report["status"] == "skipped":
        return EXIT_NO_CUDA
    return EXIT_OK if report["status"] == "ok" else EXIT_FAILED


def summary(report: dict, out: Path) -> list[str]:
    facts = report["facts"]
    where = facts.get("gpu") or "no GPU"
    lines = [
        f"gpu_check: {report['status'].upper()} on {where} (torch {facts.get('torch')}, {facts.get('nvidia_smi', '')})"
    ]
    if "reason" in report:
        lines.append(f"  {report['reason']}")
    for step in report["steps"]:
        line = f"  {step['step']:<8} rc={step['rc']} {step['seconds']:6.1f} s"
        tests = step.get("tests")
        if tests and "error" not in tests:
            line += f"  passed {tests['passed']}, failed {tests['failed']}, skipped {tests['skipped']}"
            lines.append(line)
            lines += [f"    FAILED {name}" for name in tests["failed_tests"]]
            lines += [f"    skipped: {reason}" for reason in tests["skip_reasons"]]
        elif step.get("bench"):
            lines.append(line + f"  status {step['bench'].get('status')}")
            for name, r in (step["bench"].get("ratios") or {}).items():
                target = (
                    "" if r["target"] is None else f" (target >= {r['target']}: {'met' if r['met'] else 'NOT met'})"
                )
                lines.append(f"    {name:<40} {r['ratio']:6.2f}x{target}")
        else:
            lines.append(line + (f"  {tests['error']}" if tests else ""))
    lines.append(f"  results in {out} (gpu_check.json, gpu_check.log, junit_*.xml, bench_gpu.json)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
