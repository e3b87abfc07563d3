"""The CPU image (docker/Dockerfile.cpu), built and run for real: non-root, healthcheck, ready, real photographs
answered with the same labels as the in-process service on the same model file, /metrics, and exit 0 on
SIGTERM after draining.

The model: the demo model baked into the image when there is one, else the toy ONNX model of the service
tests mounted as a volume (FASEG_MODEL). Slow: the first build takes minutes (then the layer cache).
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from faseg.bench.service_bench import free_port

from . import ROOT, cpu_image, engine, run, wait_until

pytestmark = pytest.mark.slow

BAKED_MODEL = "/opt/faseg/models/faseg_demo.onnx"
READY_TIMEOUT_S = 180
DRAIN_DELAY_S = 2


def photographs() -> dict[str, bytes]:
    """Real photographs (scikit-image samples), JPEG and PNG."""
    import skimage.data

    out = {}
    for name, fmt in (("astronaut", "JPEG"), ("coffee", "PNG"), ("chelsea", "JPEG")):
        buf = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).save(buf, format=fmt, quality=90)
        out[f"{name}.{fmt.lower()}"] = buf.getvalue()
    return out


def labels_of(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


class Container:
    def __init__(self, exe: str, image: str, tmp: Path) -> None:
        self.exe, self.image, self.tmp = exe, image, tmp
        self.name = f"faseg-test-{int(time.time() * 1000)}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model_file = tmp / "model.onnx"  # the model file the container serves, for the in-process twin
        self.args: list[str] = []

    def prepare_model(self) -> None:
        baked = subprocess.run(
            [self.exe, "run", "--rm", "--entrypoint", "cat", self.image, BAKED_MODEL],
            capture_output=True,
            check=False,
            timeout=120,
        )
        if baked.returncode == 0 and baked.stdout:  # the demo model baked into the image
            self.model_file.write_bytes(baked.stdout)
            return
        # Only a missing file falls back to the toy model: the image user must be able to read a baked one
        # (an unreadable one once sent this test to the toy model while the service could not start).
        assert b"No such file" in baked.stderr, baked.stderr.decode(errors="replace")[-2000:]
        spec = importlib.util.spec_from_file_location("service_toy_model", ROOT / "tests/service/service_toy_model.py")
        assert spec and spec.loader
        toy = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(toy)
        toy.export_toy_onnx(self.model_file)
        self.model_file.chmod(0o644)
        self.tmp.chmod(0o755)
        self.args = ["-v", f"{self.tmp}:/models:ro", "-e", "FASEG_MODEL=/models/model.onnx"]

    def start(self) -> None:
        run(
            [
                self.exe,
                "run",
                "-d",
                "--name",
                self.name,
                "-p",
                f"127.0.0.1:{self.port}:8000",
                "-e",
                f"FASEG_DRAIN_DELAY_S={DRAIN_DELAY_S}",
                "-e",
                "FASEG_DRAIN_TIMEOUT_S=20",
                "-e",
                "FASEG_INTRA_OP_THREADS=1",
                *self.args,
                self.image,
            ]
        )

    def logs(self) -> str:
        result = run([self.exe, "logs", self.name], check=False)
        return result.stdout + result.stderr

    def running(self) -> bool:
        state = run([self.exe, "inspect", "--format", "{{.State.Running}}", self.name], check=False).stdout.strip()
        return state == "true"

    def remove(self) -> None:
        run([self.exe, "rm", "-f", "-t", "0", self.name], check=False)


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    exe = engine()
    image = cpu_image(exe)
    c = Container(exe, image, tmp_path_factory.mktemp("model"))
    c.prepare_model()
    c.start()
    try:

        def ready() -> bool:
            if not c.running():
                raise AssertionError(f"container exited:\n{c.logs()}")
            return httpx.get(c.url + "/readyz", timeout=2).status_code == 200

        try:
            wait_until(ready, READY_TIMEOUT_S, "the container to become ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- logs ---\n{c.logs()}") from None
        yield c
    finally:
        c.remove()


def test_runs_as_non_root_with_a_healthcheck(container: Container) -> None:
    exe = container.exe
    uid = run([exe, "exec", container.name, "id", "-u"]).stdout.strip()
    assert uid == "10001"
    user = run([exe, "image", "inspect", "--format", "{{.Config.User}}", container.image]).stdout.strip()
    assert user == "10001:10001"
    health = run([exe, "image", "inspect", "--format", "{{json .Config.Healthcheck}}", container.image]).stdout
    assert "faseg-entrypoint" in health and "healthcheck" in health
    if Path(exe).name == "podman":  # podman runs healthchecks through systemd timers: run one by hand
        assert run([exe, "healthcheck", "run", container.name], check=False).returncode == 0
    # Nothing in the image is writable by the server user except its cache (and /tmp).
    writable = run(
        [exe, "exec", container.name, "sh", "-c", "find /opt/faseg /usr/local/bin -writable 2>/dev/null | head -n 5"]
    ).stdout.strip()
    assert writable == ""


def test_real_photographs_same_labels_as_in_process(container: Container) -> None:
    from faseg.service import Settings, create_app
    from fastapi.testclient import TestClient

    photos = photographs()
    params = {"outputs": "png", "output_size": "original"}
    headers = {"Accept": "image/png"}
    remote = {}
    with httpx.Client(base_url=container.url, timeout=60) as client:
        for name, data in photos.items():
            remote[name] = labels_of(client.post("/v1/segment", params=params, headers=headers, content=data))
        models = client.get("/v1/models").json()
    settings = Settings(model=container.model_file, intra_op_threads=1, max_batch_size=1, warmup=True)
    with TestClient(create_app(settings)) as local:
        wait_until(lambda: local.get("/readyz").status_code == 200, 120, "the in-process service")
        for name, data in photos.items():
            here = labels_of(local.post("/v1/segment", params=params, headers=headers, content=data))
            assert here.shape == remote[name].shape
            agreement = float((here == remote[name]).mean())
            assert agreement == 1.0, f"{name}: only {agreement:.4%} of the pixels agree"
    assert models  # /v1/models answers in the container too


def test_metrics(container: Container) -> None:
    text = httpx.get(container.url + "/metrics", timeout=10).text
    assert 'faseg_requests_total{code="200",endpoint="/v1/segment"}' in text
    images = [line for line in text.splitlines() if line.startswith("faseg_inference_images_total ")]
    assert images and float(images[0].split()[1]) >= 3
    assert "faseg_ready 1.0" in text


def test_sigterm_drains_and_exits_zero(container: Container) -> None:
    """Last in this module: stops the container. Requests in flight at SIGTERM are answered, never dropped."""
    photo = next(iter(photographs().values()))
    results: list[int | str] = []

    def client() -> None:
        try:
            response = httpx.post(container.url + "/v1/segment", content=photo, timeout=60)
            results.append(response.status_code)
        except httpx.HTTPError as exc:
            results.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    run([container.exe, "kill", "--signal", "TERM", container.name])
    # While draining: not ready, still alive.
    wait_until(
        lambda: httpx.get(container.url + "/readyz", timeout=2).status_code == 503,
        DRAIN_DELAY_S + 1,
        "/readyz to turn 503",
        interval_s=0.05,
    )
    assert httpx.get(container.url + "/livez", timeout=2).status_code == 200
    for t in threads:
        t.join(60)
    assert all(code in (200, 503) for code in results), results
    code = run([container.exe, "wait", container.name], timeout=60).stdout.strip()
    assert code == "0", container.logs()
    assert "drain" in container.logs().lower()


def test_a_missing_model_is_one_clear_error() -> None:
    exe = engine()
    image = cpu_image(exe)
    result = run([exe, "run", "--rm", "-e", "FASEG_MODEL=/models/missing.onnx", image], check=False, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot load the model" in result.stdout + result.stderr
