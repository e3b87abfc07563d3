"""`faseg loadtest`: an async load generator for the service's ``POST /v1/segment``.

- :mod:`.client`: HTTP transports (aiohttp or httpx), the closed and open loops, latency statistics;
- :mod:`.metrics_scrape`: the server's stage breakdown from two ``/metrics`` scrapes;
- :mod:`.runner`: a sweep over concurrencies or rates with pre-flight and progress;
- :mod:`.report`: report.json / report.csv / latency_throughput.png and the environment of a run;
- :mod:`.images`: request bodies (a folder of images, or synthetic JPEGs).

It is a client tool: it imports nothing from ``faseg.service`` and only needs a URL.
"""

from .images import Payload, load_folder, synthetic
from .report import check_report, write_report
from .runner import LoadTestConfig, ServerUnreachable, run, run_async

__all__ = [
    "LoadTestConfig",
    "Payload",
    "ServerUnreachable",
    "check_report",
    "load_folder",
    "run",
    "run_async",
    "synthetic",
    "write_report",
]
