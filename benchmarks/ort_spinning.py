"""ONNX Runtime intra-op spinning on and off, for the service and for the raw backend, side by side.

The service disables the spin-wait of ONNX Runtime's intra-op threads on CPU (export/session.py):
between model runs the same cores decode, post-process and serve HTTP, and spinning threads take their
CPU. This script is the evidence: the same server and load, alternating a server whose sessions spin
(``allow_spinning=1``, ONNX Runtime's default) with one whose sessions do not, plus the raw backend both
ways (interleaved runs in one process).

    .venv/bin/python benchmarks/ort_spinning.py --model model.onnx      # records benchmarks/results/

``--serve 0|1 ARGS...`` is the server half: ``python -m faseg.service ARGS`` with every ONNX Runtime session
forced to that spinning setting.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SPIN_KEY = "session.intra_op.allow_spinning"


def serve(spin: str, args: list[str]) -> int:
    import onnxruntime as ort

    original = ort.InferenceSession.__init__

    def forced(self, path, sess_options=None, *rest, **kwargs):  # type: ignore[no-untyped-def]
        options = sess_options or ort.SessionOptions()
        options.add_session_config_entry(SPIN_KEY, spin)
        original(self, path, options, *rest, **kwargs)

    ort.InferenceSession.__init__ = forced
    from faseg.service.cli import main as service_main

    return service_main(args)


def raw_ab(model: Path, runs: int) -> dict[str, float]:
    """The raw runtime (the service's ``OrtSession``) with spinning on and off, interleaved."""
    import numpy as np
    from faseg.export.session import OrtSession, SessionConfig

    sessions = {
        spin: OrtSession(model, SessionConfig(device="cpu", intra_op_threads=0, allow_spinning=spin == "1"))
        for spin in ("1", "0")
    }
    h, w = sessions["1"].input_size or (512, 512)
    images = np.random.default_rng(0).integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    times: dict[str, list[float]] = {spin: [] for spin in sessions}
    for session in sessions.values():
        session.run(images)
    for _ in range(runs):
        for spin, session in sessions.items():
            started = time.perf_counter()
            session.run(images)
            times[spin].append(time.perf_counter() - started)
    return {f"spin_{spin}_batch1_median_ms": round(statistics.median(t) * 1e3, 2) for spin, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        return serve(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an exported .onnx file")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternations of spin on / off")
    parser.add_argument("--size", default="640x480", help="synthetic JPEG size WxH")
    parser.add_argument("--label")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/<date>_ort_spinning.json)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from faseg.bench.service_bench import ServerProcess
    from faseg.loadtest import LoadTestConfig, run
    from faseg.loadtest.images import parse_wxh, synthetic
    from faseg.loadtest.report import environment

    class SpinServer(ServerProcess):
        spin = "1"

        @property
        def command(self) -> list[str]:
            return [sys.executable, __file__, "--serve", self.spin, *super().command[3:]]

    env = environment()
    model = Path(args.model)
    levels = [int(c) for c in args.concurrency.split(",")]
    payloads = synthetic(16, parse_wxh(args.size))
    rows: list[dict] = []
    for round_ in range(args.rounds):
        for spin in ("1", "0"):
            server = SpinServer(model)
            server.spin = spin
            with server:
                report = run(
                    LoadTestConfig(
                        url=server.url,
                        payloads=payloads,
                        images=f"synthetic JPEG {args.size} x16",
                        levels=levels,
                        duration_s=args.duration,
                        progress=None,
                    )
                )
            for step in report["steps"]:
                rows.append(
                    {
                        "round": round_,
                        "allow_spinning": spin,
                        "concurrency": step["concurrency"],
                        "images_per_s": step["images_per_s"],
                        "p50_ms": step["latency_ms"]["p50"],
                    }
                )
            print(f"round {round_ + 1} spin={spin}: " + str(rows[-len(levels) :]), file=sys.stderr)
    summary = {}
    for c in levels:
        on = [r["images_per_s"] for r in rows if r["concurrency"] == c and r["allow_spinning"] == "1"]
        off = [r["images_per_s"] for r in rows if r["concurrency"] == c and r["allow_spinning"] == "0"]
        summary[f"c={c}"] = {
            "images_per_s_spinning": round(statistics.median(on), 2),
            "images_per_s_no_spinning": round(statistics.median(off), 2),
            "ratio_no_spin_over_spin": round(statistics.median(off) / statistics.median(on), 3),
            "rounds_no_spin_faster": sum(o > s for o, s in zip(off, on)),
            "rounds": len(on),
        }
    report = {
        "benchmark": "ort_spinning",
        "date": env["date"],
        "command": "python benchmarks/ort_spinning.py " + " ".join(argv),
        "label": args.label or f"model {model.name}",
        "environment": env,
        "server": summary,
        "raw_backend": raw_ab(model, runs=8),
        "rounds": rows,
    }
    print(json.dumps(report, indent=2))
    if not args.no_save:
        out = Path(args.out) if args.out else RESULTS / f"{env['date']}_ort_spinning.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
