"""Deployment files: docker-compose.yml through `docker-compose config` for every profile, and the values that
matter in it, the Dockerfiles, Prometheus / Grafana provisioning, nginx and the Kubernetes manifests; plus the
GPU entrypoint's engine builder (docker/build_engines.sh) run against stub commands.

Nothing here needs a container engine. The `docker-compose config` tests skip when no compose binary is
installed (`apt-get install docker-compose`), unless FASEG_REQUIRE_COMPOSE=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "docker"
PROFILES = ("gpu", "replicas", "cpu")
APP_SERVICES = {"faseg": "gpu", "faseg-replica": "replicas", "faseg-cpu": "cpu"}
SHARED_BEGIN = "# ==== shared (docker/Dockerfile, docker/Dockerfile.cpu): python stages ===="
SHARED_END = "# ==== end shared ===="


# ---------------------------------------------------------------------------------------------- helpers


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    return None


def require_compose() -> list[str]:
    command = compose_command()
    if command is None:
        if os.environ.get("FASEG_REQUIRE_COMPOSE") == "1":
            pytest.fail("FASEG_REQUIRE_COMPOSE=1 but neither docker-compose nor `docker compose` is installed")
        pytest.skip("no docker-compose / `docker compose` installed (apt-get install docker-compose)")
    return command


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without FASEG_* / compose variables of the caller, so defaults are what is tested."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASEG_", "COMPOSE_", "GRAFANA_", "TORCH_"))}
    env.pop("DOCKER_HOST", None)
    env.update(extra)
    return env


def compose_config(*profiles: str, **env: str) -> dict[str, Any]:
    command = require_compose()
    args = [*command, "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT)]
    for profile in profiles:
        args += ["--profile", profile]
    result = subprocess.run(
        [*args, "config"], capture_output=True, text=True, cwd=ROOT, env=clean_env(**env), timeout=120, check=False
    )
    assert result.returncode == 0, f"{' '.join(args)} config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def seconds(value: str | int | float) -> float:
    """Compose durations: 45s, 1m30s, 500ms, or a number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    total, units = 0.0, {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    for number, unit in parts:
        total += float(number) * units[unit]
    return total


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path → source (volume name or host path), for short or long volume syntax."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            out[parts[1]] = parts[0]
        else:
            out[volume["target"]] = volume.get("source", "")
    return out


def dockerfile_stage_block(path: Path) -> str:
    text = path.read_text()
    begin, end = text.index(SHARED_BEGIN), text.index(SHARED_END)
    return text[begin:end]


# ---------------------------------------------------------------------------------------------- docker-compose config


@pytest.mark.parametrize("profiles", [(), *[(p,) for p in PROFILES], PROFILES])
def test_compose_config_is_valid(profiles: tuple[str, ...]) -> None:
    config = compose_config(*profiles)
    assert {"prometheus", "grafana"} <= set(config["services"])


def test_gpu_service_reserves_a_gpu_and_drains_within_its_grace_period() -> None:
    service = compose_config("gpu")["services"]["faseg"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    env = env_of(service)
    assert env["FASEG_DEVICE"] == "cuda"
    assert re.fullmatch(r"\d+x\d+(,\d+x\d+)*", env["FASEG_ENGINE_BUCKETS"])
    assert service["build"]["dockerfile"].endswith("docker/Dockerfile")
    assert "BASE_IMAGE" in service["build"]["args"]


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_app_services_healthcheck_volumes_and_grace_period(name: str) -> None:
    service = compose_config(APP_SERVICES[name])["services"][name]
    health = service["healthcheck"]
    assert health["test"] == ["CMD", "faseg-entrypoint", "healthcheck"]
    assert seconds(health["interval"]) <= 30 and seconds(health["timeout"]) <= 10 and health["retries"] >= 2
    assert seconds(health["start_period"]) >= 60
    env = env_of(service)
    drain = float(env["FASEG_DRAIN_DELAY_S"]) + float(env["FASEG_DRAIN_TIMEOUT_S"])
    assert seconds(service["stop_grace_period"]) > drain, "the container would be killed while draining"
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
    volumes = mounts(service)
    assert "/models" in volumes
    if name != "faseg-cpu":  # the GPU services keep their engines on a named volume
        assert volumes["/var/cache/faseg"] in ("engine-cache", f"{ROOT.name.lower()}_engine-cache")
        assert "engine-cache" in compose_config(APP_SERVICES[name])["volumes"]


def test_healthcheck_command_probes_readyz() -> None:
    entrypoint = (DOCKER / "entrypoint.sh").read_text()
    body = entrypoint[entrypoint.index("healthcheck() {") :]
    assert "/readyz" in body[: body.index("\n}\n")]


@pytest.mark.parametrize(("name", "profile"), [("faseg-replica", "replicas"), ("faseg-cpu", "cpu")])
def test_replica_count_defaults_and_follows_FASEG_REPLICAS(name: str, profile: str) -> None:
    assert compose_config(profile)["services"][name]["deploy"]["replicas"] == 2
    assert compose_config(profile, FASEG_REPLICAS="5")["services"][name]["deploy"]["replicas"] == 5


def test_replicas_share_the_gpus_and_sit_behind_the_load_balancer() -> None:
    services = compose_config("replicas")["services"]
    replica = services["faseg-replica"]
    devices = replica["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "ports" not in replica, "replicas must not publish host ports (they would collide)"
    assert "faseg-backend" in replica["networks"]["default"]["aliases"]
    lb = services["lb"]
    assert "faseg-replica" in lb["depends_on"]
    assert mounts(lb)["/etc/nginx/nginx.conf"].endswith("docker/nginx/nginx.conf")


def test_cpu_profile_uses_the_cpu_image_without_gpu() -> None:
    services = compose_config("cpu")["services"]
    cpu = services["faseg-cpu"]
    assert cpu["build"]["dockerfile"].endswith("docker/Dockerfile.cpu")
    assert "reservations" not in cpu["deploy"].get("resources", {})
    assert env_of(cpu)["FASEG_DEVICE"] == "cpu"
    assert "faseg-backend" in cpu["networks"]["default"]["aliases"]
    assert "ports" not in cpu
    assert "faseg-cpu" in services["lb-cpu"]["depends_on"]
    published = [str(p.get("published", p) if isinstance(p, dict) else p) for p in services["lb-cpu"]["ports"]]
    assert any("8080" in p for p in published)


def test_monitoring_services_mount_their_provisioning() -> None:
    services = compose_config()["services"]
    assert mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"].endswith("docker/prometheus/prometheus.yml")
    assert mounts(services["grafana"])["/etc/grafana/provisioning"].endswith("docker/grafana/provisioning")


# ---------------------------------------------------------------------------------------------- static checks


def test_compose_profiles_as_documented() -> None:
    services = raw_compose()["services"]
    for name, profile in APP_SERVICES.items():
        assert services[name]["profiles"] == [profile]
    assert "profiles" not in services["prometheus"] and "profiles" not in services["grafana"]


def test_dockerfiles_share_their_python_stages() -> None:
    gpu, cpu = DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"
    assert dockerfile_stage_block(gpu) == dockerfile_stage_block(cpu)
    for path in (gpu, cpu):
        text = path.read_text()
        runtime = text[text.index(" AS runtime") :]
        assert re.search(r"^USER \$\{UID\}:\$\{UID\}$", runtime, re.M), "runtime must run as a numeric non-root UID"
        assert re.search(r"^ARG UID=10001$", runtime, re.M)
        assert "HEALTHCHECK" in runtime and '"faseg-entrypoint", "healthcheck"' in runtime
        assert 'ENTRYPOINT ["tini", "--", "faseg-entrypoint"]' in runtime
        assert "STOPSIGNAL SIGTERM" in runtime
    assert re.search(r"^ARG BASE_IMAGE=nvcr\.io/nvidia/tensorrt:", gpu.read_text(), re.M)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", cpu.read_text(), re.M)


def test_dockerignore_keeps_what_the_dockerfiles_copy() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    copied = set()
    for path in (DOCKER / "Dockerfile", DOCKER / "Dockerfile.cpu"):
        for match in re.finditer(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", path.read_text(), re.M):
            copied.update(match.group(1).split())
    assert copied, "no COPY found"
    for src in copied:
        top = src.split("/")[0]
        assert src not in ignored and top not in ignored, f"{src} is copied but .dockerignore excludes it"
        assert (ROOT / src).exists(), f"{src} is copied but does not exist"


def test_prometheus_scrapes_every_app_service() -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "faseg")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert set(sd["names"]) == set(APP_SERVICES) and sd["port"] == 8000 and sd["type"] == "A"


def test_grafana_dashboard_uses_only_real_metrics_and_covers_the_essentials() -> None:
    from faseg.service.metrics import ServiceMetrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
    names = {
        family.name + suffix
        for family in ServiceMetrics().registry.collect()
        for suffix in suffixes.get(family.type, [""])
    }
    provisioning = DOCKER / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "faseg.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/etc/grafana/provisioning/dashboards"
    dashboard = json.loads((provisioning / "dashboards" / "faseg.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bfaseg_[a-z_]+", e)}
    assert used and used <= names, f"unknown metrics in the dashboard: {sorted(used - names)}"
    text = "\n".join(exprs)
    for needed in (
        "faseg_inference_images_total",
        "faseg_request_duration_seconds_bucket",
        "faseg_batch_size_sum",
        "faseg_queue_depth",
        "faseg_rejections_total",
    ):
        assert needed in text, needed
    assert {"0.5", "0.9", "0.99"} <= set(re.findall(r"histogram_quantile\((0\.\d+)", text))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_nginx_balances_over_the_replica_alias() -> None:
    conf = (DOCKER / "nginx" / "nginx.conf").read_text()
    assert re.search(r"upstream faseg \{[^}]*server faseg-backend:8000", conf)
    assert "listen 8080;" in conf and "proxy_pass http://faseg;" in conf
    assert conf.count("{") == conf.count("}")


def k8s_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DOCKER / "k8s" / name).read_text()) if d]


def test_k8s_deployment() -> None:
    (deployment,) = [d for d in k8s_docs("deployment.yaml") if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    env = {e["name"]: e["value"] for e in container["env"]}
    drain = float(env["FASEG_DRAIN_DELAY_S"]) + float(env["FASEG_DRAIN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > drain
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    mounts_ = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/cache/faseg" in mounts_
    (service,) = k8s_docs("service.yaml")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    kustomization = k8s_docs("kustomization.yaml")[0]
    assert {"deployment.yaml", "service.yaml", "hpa.yaml"} <= set(kustomization["resources"])


def test_k8s_autoscaler_on_queue_depth() -> None:
    (hpa,) = k8s_docs("hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["name"] == "faseg"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "faseg_queue_depth"


def test_kserve_inference_service_speaks_v2() -> None:
    docs = {d["kind"]: d for d in k8s_docs("kserve.yaml")}
    runtime, isvc = docs["ServingRuntime"], docs["InferenceService"]
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2" and model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    (container,) = runtime["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


# ---------------------------------------------------------------------------------------------- engine builder


def write_stub(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def engine_env(tmp_path: Path) -> dict[str, str]:
    """Stubs for python3 (versions), faseg (records its calls, writes the outputs) and nvidia-smi."""
    bin_dir, checkpoint = tmp_path / "bin", tmp_path / "ckpt"
    bin_dir.mkdir()
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    calls = tmp_path / "calls.log"
    versions = 'case "$*" in *tensorrt*) echo 10.13.0;; *faseg.__version__*) echo 0.1.0;; *) exit 1;; esac\n'
    write_stub(bin_dir / "python3", versions)
    write_stub(bin_dir / "nvidia-smi", 'echo "NVIDIA H100 80GB HBM3, 9.0"\n')
    write_stub(
        bin_dir / "faseg",
        'case "$*" in *--help*) exit 0;; esac\n'  # `faseg export trt --help`: the subcommand exists
        f'echo "$*" >> {calls}\n'
        'while [ $# -gt 0 ]; do [ "$1" = --out ] && echo built > "$2"; shift; done\n',
    )
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FASEG_CHECKPOINT": str(checkpoint),
        "FASEG_ENGINE_CACHE": str(tmp_path / "cache"),
        "FASEG_PLUGIN_LIBRARY": "",
        "CALLS": str(calls),
    }


def build_engines(env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DOCKER / "build_engines.sh")],
        capture_output=True,
        text=True,
        env={**env, **extra},
        timeout=60,
        check=False,
    )


def test_engine_builder_builds_each_bucket_once_then_loads_from_the_cache(engine_env: dict[str, str]) -> None:
    first = build_engines(engine_env, FASEG_ENGINE_BUCKETS="512x512, 512x1024")
    assert first.returncode == 0, first.stderr
    served = Path(first.stdout.strip())
    assert served.name == "model.plan" and served.is_file() and served.parent.name.startswith("512x512-fp32-")
    calls = Path(engine_env["CALLS"]).read_text().splitlines()
    assert [c.split()[:2] for c in calls] == [["export", "onnx"], ["export", "trt"]] * 2
    assert "--size 512x1024" in calls[2] and "--flavour plugin" in calls[0] and "--precision fp32" in calls[0]
    assert "--batch-profile 1,4,8" in calls[1] and "--timing-cache" in calls[1]
    assert (served.parent / "model.onnx").is_file()  # the engine's metadata source for the tensorrt backend
    assert json.loads((served.parent / "build.json").read_text())["gpu"] == "NVIDIA H100 80GB HBM3, 9.0"

    again = build_engines(engine_env, FASEG_ENGINE_BUCKETS="512x512,512x1024")
    assert again.returncode == 0 and Path(again.stdout.strip()) == served
    assert len(Path(engine_env["CALLS"]).read_text().splitlines()) == 4, "a cache hit must not export or build"

    # Anything the engine depends on changes the key: new weights → a new build.
    Path(engine_env["FASEG_CHECKPOINT"], "model.safetensors").write_bytes(b"new weights")
    rebuilt = build_engines(engine_env, FASEG_ENGINE_BUCKETS="512x512")
    assert rebuilt.returncode == 0 and Path(rebuilt.stdout.strip()) != served
    assert not list(Path(engine_env["FASEG_ENGINE_CACHE"]).glob(".build-*")), "temporary build dirs left behind"


def test_engine_builder_onnxruntime_mode_exports_onnx_only(engine_env: dict[str, str]) -> None:
    result = build_engines(engine_env, FASEG_ENGINE_BUCKETS="256x256", FASEG_ENGINE_BACKEND="onnxruntime")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).name == "model.onnx"
    (call,) = Path(engine_env["CALLS"]).read_text().splitlines()
    assert call.startswith("export onnx") and "--flavour portable" in call


@pytest.mark.parametrize(
    "settings",
    [
        {"FASEG_ENGINE_BUCKETS": ""},
        {"FASEG_ENGINE_BUCKETS": "500x512"},
        {"FASEG_ENGINE_BUCKETS": "512"},
        {"FASEG_ENGINE_BUCKETS": "512x512", "FASEG_ENGINE_PRECISION": "int4"},
        {"FASEG_ENGINE_BUCKETS": "512x512", "FASEG_MAX_BATCH_SIZE": "0"},
        {"FASEG_ENGINE_BUCKETS": "512x512", "FASEG_CHECKPOINT": "/nonexistent"},
    ],
)
def test_engine_builder_rejects_bad_settings(engine_env: dict[str, str], settings: dict[str, str]) -> None:
    result = build_engines(engine_env, **settings)
    assert result.returncode == 2 and result.stdout == "" and "error:" in result.stderr
    assert not Path(engine_env["CALLS"]).exists()


def test_engine_builder_fails_cleanly_when_the_build_fails(engine_env: dict[str, str]) -> None:
    write_stub(
        Path(engine_env["PATH"].split(":")[0]) / "faseg",
        'case "$*" in *--help*) exit 0;; "export trt"*) exit 3;; esac\n'
        'while [ $# -gt 0 ]; do [ "$1" = --out ] && echo x > "$2"; shift; done\n',
    )
    result = build_engines(engine_env, FASEG_ENGINE_BUCKETS="512x512")
    assert result.returncode == 1 and "faseg export trt failed" in result.stderr
    cache = Path(engine_env["FASEG_ENGINE_CACHE"])
    assert not list(cache.glob("*/model.plan")) and not list(cache.glob(".build-*"))


def test_engine_builder_falls_back_to_onnxruntime_without_export_trt(engine_env: dict[str, str]) -> None:
    write_stub(
        Path(engine_env["PATH"].split(":")[0]) / "faseg",
        'case "$*" in "export trt --help") exit 2;; esac\n'
        f'echo "$*" >> {engine_env["CALLS"]}\n'
        'while [ $# -gt 0 ]; do [ "$1" = --out ] && echo x > "$2"; shift; done\n',
    )
    result = build_engines(engine_env, FASEG_ENGINE_BUCKETS="512x512")
    assert result.returncode == 0, result.stderr
    assert "falling back" in result.stderr and Path(result.stdout.strip()).name == "model.onnx"
    (call,) = Path(engine_env["CALLS"]).read_text().splitlines()
    assert call.startswith("export onnx") and "--flavour portable" in call
