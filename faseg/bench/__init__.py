"""`faseg bench`: side-by-side benchmarks, each one run producing one JSON report with its environment.

- :mod:`.model_bench`: images/s and latency per backend × batch size × precision (``faseg bench model``);
- :mod:`.service_bench`: the parity run, HTTP service vs the raw backend (``faseg bench service``), with
  :mod:`.raw_backend` (the model in-process, as the server loads it) and :mod:`.server_process` (the server
  as a child process).

Recorded reports live in ``benchmarks/results/``; ``benchmarks/make_docs.py`` turns them into
``docs/benchmarks.md``.
"""

from .model_bench import BenchError, run_model_bench
from .service_bench import ServerProcess, run_service_bench

__all__ = ["BenchError", "ServerProcess", "run_model_bench", "run_service_bench"]
