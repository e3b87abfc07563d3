"""A real ``python -m faseg.service`` process on a free loopback port, for tests that talk HTTP to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from faseg.bench.service_bench import free_port, stop_process

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
# Fast, quiet defaults for test servers; modules add what they test.
BASE_ARGS = ["--no-access-log", "--log-level", "warning", "--drain-delay-s", "0", "--decode-threads", "2"]


class ServerProcess:
    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = env or {}
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait_ready: bool = True) -> ServerProcess:
        command = [sys.executable, "-m", "faseg.service", "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, **self.env}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command + self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(POLL_INTERVAL_S)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        assert self.process is not None
        return self.process.wait(timeout_s)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        return stop_process(self.process, STOP_TIMEOUT_S)


# The session fixture ``server_factory`` (conftest.py): start a server on the toy model with extra flags.
ServerFactory = Callable[..., ServerProcess]
