"""The compose stack, profile `cpu`, brought up for real with docker-compose (through podman's Docker-compatible
socket on the development machines): two CPU replicas behind nginx and Prometheus. The load balancer spreads
requests over both replicas, visible in each replica's own /metrics and in Prometheus (one series per replica).

No registry is reachable on the development machines, so nginx and Prometheus run from stand-in images built
here from Debian's packages (FASEG_NGINX_IMAGE / FASEG_PROMETHEUS_IMAGE; the compose file's defaults are the
official images). Grafana has no Debian package and cannot be pulled: it is left out of `up` here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from faseg.bench.service_bench import free_port

from . import ROOT, cpu_image, engine, run, wait_until

pytestmark = pytest.mark.slow

REPLICAS = 2
REQUESTS = 24
STANDINS = {
    "FASEG_NGINX_IMAGE": (
        "localhost/faseg-standin-nginx:bookworm",
        "FROM debian:bookworm-slim\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends nginx-light && rm -rf /var/lib/apt/lists/*\n"
        'CMD ["nginx", "-g", "daemon off;"]\n',
    ),
    "FASEG_PROMETHEUS_IMAGE": (
        "localhost/faseg-standin-prometheus:bookworm",
        "FROM debian:bookworm-slim\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends prometheus && rm -rf /var/lib/apt/lists/*\n"
        'ENTRYPOINT ["/usr/bin/prometheus"]\n',
    ),
}


def compose_binary() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        if os.environ.get("FASEG_REQUIRE_COMPOSE") == "1" or os.environ.get("FASEG_REQUIRE_CONTAINERS") == "1":
            pytest.fail("docker-compose is not installed")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    return path


def image_exists(exe: str, image: str) -> bool:
    return run([exe, "image", "inspect", image], check=False).returncode == 0


class Stack:
    def __init__(self, compose: str, env: dict[str, str], project: str) -> None:
        self.compose, self.env, self.project = compose, env, project

    def __call__(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        command = [self.compose, "-f", str(ROOT / "docker-compose.yml"), "-p", self.project, "--profile", "cpu", *args]
        return run(command, check=check, timeout=timeout, cwd=ROOT, env=self.env)

    def replicas(self) -> list[str]:
        return self("ps", "-q", "faseg-cpu").stdout.split()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str, dict[str, str]]]:
    exe = engine()
    compose = compose_binary()
    image = cpu_image(exe)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASEG_", "COMPOSE_"))}
    tmp = tmp_path_factory.mktemp("stack")
    service = None
    if "DOCKER_HOST" not in os.environ:
        if Path(exe).name != "podman":
            pass  # docker: its own daemon socket
        else:
            sock = tmp / "podman.sock"
            service = subprocess.Popen(
                [exe, "system", "service", "--time=0", f"unix://{sock}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_until(sock.exists, 30, "the podman socket")
            env["DOCKER_HOST"] = f"unix://{sock}"
    for variable, (tag, dockerfile) in STANDINS.items():
        if os.environ.get(variable):
            env[variable] = os.environ[variable]
            continue
        if not image_exists(exe, tag):
            run([exe, "build", "-t", tag, "-"], input=dockerfile, timeout=1200)
        env[variable] = tag

    models = tmp / "models"
    models.mkdir()
    baked = (
        run(
            [exe, "run", "--rm", "--entrypoint", "test", image, "-f", "/opt/faseg/models/faseg_demo.onnx"], check=False
        ).returncode
        == 0
    )
    if not baked:  # no demo model in the image yet: serve the service tests' toy model from the volume
        spec = importlib.util.spec_from_file_location("service_toy_model", ROOT / "tests/service/service_toy_model.py")
        assert spec and spec.loader
        toy = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(toy)
        toy.export_toy_onnx(models / "model.onnx")
        (models / "model.onnx").chmod(0o644)
        models.chmod(0o755)
        env["FASEG_MODEL"] = "/models/model.onnx"
    lb_port, prom_port = free_port(), free_port()
    env.update(
        FASEG_CPU_IMAGE=image,
        FASEG_REPLICAS=str(REPLICAS),
        FASEG_LB_PORT=str(lb_port),
        FASEG_PROMETHEUS_PORT=str(prom_port),
        FASEG_MODELS_DIR=str(models),
        FASEG_INTRA_OP_THREADS="1",
        FASEG_CPU_LIMIT="1",
    )
    stack = Stack(compose, env, f"fasegtest{os.getpid()}")
    try:
        stack("up", "-d", "--no-build", "faseg-cpu", "lb-cpu", "prometheus", timeout=900)
        yield stack, exe, {"lb": f"http://127.0.0.1:{lb_port}", "prometheus": f"http://127.0.0.1:{prom_port}"}
    finally:
        logs = stack("logs", "--no-color", "--tail", "40", check=False)
        print(logs.stdout[-8000:])
        stack("down", "-v", "--timeout", "60", check=False, timeout=300)
        if service is not None:
            service.terminate()
            service.wait(30)


def replica_metrics(exe: str, container: str) -> str:
    script = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())"
    return run([exe, "exec", container, "python3", "-c", script]).stdout


def segment_requests_ok(metrics: str) -> float:
    match = re.search(r'^faseg_requests_total\{code="200",endpoint="/v1/segment"\} (\S+)$', metrics, re.M)
    return float(match.group(1)) if match else 0.0


def test_load_balancer_spreads_requests_over_the_replicas(stack: tuple[Stack, str, dict[str, str]]) -> None:
    compose, exe, urls = stack
    replicas = wait_until(lambda: len(compose.replicas()) == REPLICAS and compose.replicas(), 60, "the replicas")
    assert len(replicas) == REPLICAS, "deploy.replicas was not honoured"

    def all_healthy() -> bool:  # the image's HEALTHCHECK command, run by hand (podman has no timer here)
        return all(
            run([exe, "exec", c, "faseg-entrypoint", "healthcheck"], check=False).returncode == 0 for c in replicas
        )

    wait_until(all_healthy, 180, "every replica to be ready", interval_s=1)
    for c in replicas:
        user = run([exe, "exec", c, "id", "-u"]).stdout.strip()
        assert user == "10001"
    wait_until(lambda: httpx.get(urls["lb"] + "/readyz", timeout=5).status_code == 200, 60, "the load balancer")

    import io

    import skimage.data
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(buf, format="JPEG", quality=90)
    before = {c: segment_requests_ok(replica_metrics(exe, c)) for c in replicas}
    upstreams = []
    with httpx.Client(base_url=urls["lb"], timeout=60) as client:
        for _ in range(REQUESTS):
            response = client.post("/v1/segment", content=buf.getvalue(), headers={"Content-Type": "image/jpeg"})
            assert response.status_code == 200, response.text
            assert response.json()["stats"]
            upstreams.append(response.headers["X-Upstream"])
    assert len(set(upstreams)) == REPLICAS, upstreams

    served = {c: segment_requests_ok(replica_metrics(exe, c)) - before[c] for c in replicas}
    assert sum(served.values()) == REQUESTS, served
    assert all(n >= REQUESTS / REPLICAS / 2 for n in served.values()), f"unbalanced: {served}"

    # Prometheus (docker/prometheus/prometheus.yml, DNS discovery) sees one series per replica.
    query = 'faseg_requests_total{endpoint="/v1/segment",code="200"}'

    def per_instance() -> dict[str, float] | None:
        body = httpx.get(urls["prometheus"] + "/api/v1/query", params={"query": query}, timeout=5).json()
        series = {r["metric"]["instance"]: float(r["value"][1]) for r in body["data"]["result"]}
        if len(series) == REPLICAS and sum(series.values()) >= sum(before.values()) + REQUESTS:
            return series
        return None

    series = wait_until(per_instance, 90, "Prometheus to scrape every replica", interval_s=2)
    assert all(v > 0 for v in series.values()), json.dumps(series)


def test_replicas_drain_and_exit_zero_on_stop(stack: tuple[Stack, str, dict[str, str]]) -> None:
    compose, exe, _ = stack
    replicas = compose.replicas()
    started = time.monotonic()
    compose("stop", "-t", "60", "faseg-cpu", timeout=300)
    elapsed = time.monotonic() - started
    for c in replicas:
        code = run([exe, "inspect", "--format", "{{.State.ExitCode}}", c]).stdout.strip()
        assert code == "0", run([exe, "logs", c], check=False).stderr[-3000:]
    assert elapsed < 45, f"stop took {elapsed:.0f} s: the replicas did not drain within their grace period"
