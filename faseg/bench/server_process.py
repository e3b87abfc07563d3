"""``python -m faseg.service`` as a child process on a free loopback port, for benchmarks and tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 300.0  # warm-up of every batch size of a large model on a slow CPU
STOP_TIMEOUT_S = 30.0
DEFAULT_SERVER_ARGS = ("--no-access-log", "--log-level", "warning", "--drain-delay-s", "0")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """SIGTERM, then SIGKILL if it has not exited after ``timeout_s``; its exit code (None if never started)."""
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class ServerProcess:
    """``python -m faseg.service`` on a free loopback port; a context manager that always stops it."""

    def __init__(self, model: Path, args: Sequence[str] = (), log_path: Path | None = None) -> None:
        self.model = model
        self.args = [*DEFAULT_SERVER_ARGS, *args]
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "faseg.service", "--model", str(self.model),
            "--host", "127.0.0.1", "--port", str(self.port), *self.args,
        ]  # fmt: skip

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> ServerProcess:
        log = self.log_path.open("wb") if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        finally:
            if self.log_path:
                log.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"the server was not ready after {timeout_s:g} s: {self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process so far (Linux ``/proc``)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> int | None:
        return stop_process(self.process)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
