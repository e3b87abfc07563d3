"""What the journeys share: the `faseg` CLI run as a user runs it (``python -m faseg ...`` in a subprocess),
a `faseg serve` process on a free port, real photographs and a small folder dataset."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from faseg.bench.service_bench import free_port, stop_process

STARTUP_TIMEOUT_S = 300.0  # a fresh `faseg serve` exports the demo model first


def faseg(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """Run ``faseg ARGS`` (as ``python -m faseg``); fail the test with its output unless it exits 0. Returns stdout."""
    done = subprocess.run(
        [sys.executable, "-m", "faseg", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        pytest.fail(f"faseg {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}", pytrace=False)
    return done.stdout


class Served:
    """``faseg serve ARGS --port P`` in the background until :meth:`stop`."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve_{self.port}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "faseg", "serve", *args, "--port", str(self.port), "--no-access-log"],
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"faseg serve exited {self.process.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"faseg serve not ready after {STARTUP_TIMEOUT_S} s:\n{self.log.read_text()[-4000:]}")

    def classes(self) -> list[str]:
        [model] = httpx.get(self.url + "/v1/models", timeout=30).json()["models"]
        return [c["name"] for c in model["classes"]]

    def stop(self) -> None:
        stop_process(self.process)


def photo(name: str = "astronaut", size: tuple[int, int] | None = None, fmt: str = "JPEG") -> bytes:
    """A scikit-image sample photograph, encoded (optionally resized to ``size`` = (W, H))."""
    import skimage.data

    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    if size is not None:
        image = image.resize(size, Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def folder_dataset(root: Path, classes: list[str], count: int = 4, size: int = 128) -> Path:
    """A `folder:` dataset (images/, masks/, classes.json): photographs with horizontal class bands as masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.json").write_text(json.dumps({"classes": classes}))
    names = ("astronaut", "coffee", "chelsea", "rocket")
    for i in range(count):
        (root / "images" / f"img{i}.jpg").write_bytes(photo(names[i % len(names)], (size, size)))
        mask = np.zeros((size, size), dtype=np.uint8)
        for k in range(len(classes)):  # band k, shifted per image so every class moves around
            lo, hi = (k * size) // len(classes), ((k + 1) * size) // len(classes)
            mask[lo:hi] = (k + i) % len(classes)
        Image.fromarray(mask, mode="L").save(root / "masks" / f"img{i}.png")
    return root


def train_args(data: Path, out: Path, iters: int, size: int) -> list[str]:
    """Small, CPU-friendly training flags (the journeys check the path, not the accuracy)."""
    return [
        "--data", f"folder:{data}", "--out", str(out), "--iters", str(iters), "--batch", "2", "--workers", "0",
        "--crop", str(size), "--short-edges", str(size), "--num-points", "256", "--log-period", "1",
        "--no-progress", "--device", "cpu",
    ]  # fmt: skip
