"""In-process fake backends for fault tests: a numpy model (label = nearest toy prototype colour, the toy
ONNX model's answer) that can raise, hang or run out of memory on chosen batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import numpy as np
from faseg.service import Settings, create_app
from faseg.service.backends.base import Backend, BackendOutOfMemory, BackendOutput, ModelInfo
from fastapi.testclient import TestClient
from service_toy_model import CLASSES, INPUT_SIZE, PALETTE, reference_labels

INFO = ModelInfo(name="fake", classes=tuple(CLASSES), palette=tuple(map(tuple, PALETTE)), input_size=INPUT_SIZE)
# An image whose top-left pixel has this colour marks its batch for the fault (letterboxing keeps the top-left).
MARK = (255, 0, 255)
READY_TIMEOUT_S = 10.0


def marked(images: np.ndarray) -> np.ndarray:
    """(N,) bool: which images of a batch carry the mark."""
    return np.all(images[:, 0, 0] == MARK, axis=-1)


class FakeBackend(Backend):
    """``fault``: None, "raise" (a batch holding a marked image raises), "oom" (a batch of more than one image,
    or a marked image alone, raises BackendOutOfMemory) or "hang" (a batch holding a marked image blocks until
    ``release`` is set)."""

    name = "fake"

    def __init__(self, fault: str | None = None, max_batch_size: int = 4) -> None:
        super().__init__(INFO, device="cpu", max_batch_size=max_batch_size)
        self.fault = fault
        self.release = threading.Event()
        self.hanging = threading.Event()
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def infer(self, images: np.ndarray) -> BackendOutput:
        marks = marked(images)
        if self.fault == "raise" and marks.any():
            raise RuntimeError("injected backend failure")
        if self.fault == "oom" and (len(images) > 1 or marks.any()):
            raise BackendOutOfMemory("injected out of memory")
        if self.fault == "hang" and marks.any():
            self.hanging.set()
            self.release.wait()
        with self._lock:
            self.batches.append(len(images))
        labels = np.stack([reference_labels(image) for image in images])
        return BackendOutput(labels, np.ones(images.shape[:3], np.float32))

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        """Nothing to warm up (the zero images carry no mark, so the base warm-up would also pass)."""


def client(backend: Backend, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(**{"warmup": False, **settings}), backend=backend))


def wait_ready(client: TestClient, status: int = 200) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        response = client.get("/readyz")
        if response.status_code == status:
            return response.json()
        assert time.monotonic() < deadline, f"/readyz never answered {status}: {response.text}"
        time.sleep(0.02)
