"""Optional API keys (settings, key file rotation, bearer or X-API-Key, constant-time comparison, 401 shape,
exempt probes and metrics) and CORS origins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from faseg.service import Settings
from faseg.service.api import auth
from pydantic import ValidationError
from service_fake_backend import FakeBackend, client, wait_ready
from service_http import metric
from service_images import blocks_image, encode
from service_server import free_port

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
GOOD = encode(blocks_image(), "PNG")


def test_no_keys_no_authentication() -> None:
    with client(FakeBackend()) as c:
        wait_ready(c)
        assert c.post("/v1/segment", content=GOOD).status_code == 200


def test_missing_or_wrong_key_is_401_json() -> None:
    with client(FakeBackend(), api_keys=f"{KEY_A},{KEY_B}") as c:
        wait_ready(c)
        missing = c.post("/v1/segment", content=GOOD, headers={"X-Request-ID": "r1"})
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "UNAUTHORIZED" and missing.json()["request_id"] == "r1"
        assert missing.headers["www-authenticate"] == 'Bearer realm="faseg"'
        assert missing.headers["connection"] == "close"  # the body was never read
        wrong = c.get("/v1/models", headers={"Authorization": "Bearer nope-nope-nope-nope"})
        assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
        v2 = c.get("/v2/models/fake")
        assert v2.status_code == 401 and set(v2.json()) == {"error"}
        assert metric(c.get("/metrics").text, "faseg_rejections_total", '{reason="unauthorized"}') == 3


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {KEY_A}"}, {"authorization": f"bearer {KEY_B}"}, {"X-API-Key": KEY_B}],
    ids=["bearer", "bearer-lower", "x-api-key"],
)
def test_valid_key_passes(headers: dict[str, str]) -> None:
    with client(FakeBackend(), api_keys=f"{KEY_A},{KEY_B}") as c:
        wait_ready(c)
        assert c.post("/v1/segment", content=GOOD, headers=headers).status_code == 200
        assert c.get("/v2/models/fake", headers=headers).status_code == 200


def test_environment_holds_several_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASEG_API_KEYS", f"{KEY_A}, {KEY_B}")
    assert [k.get_secret_value() for k in Settings().api_keys] == [KEY_A, KEY_B]
    assert "key-a" not in Settings().model_dump_json()  # /v1/models shows the settings: keys stay hidden


def test_short_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(api_keys="short")


@pytest.mark.parametrize(("health", "metrics"), [(True, True), (False, True), (True, False), (False, False)])
def test_probes_and_metrics_exempt_by_setting(health: bool, metrics: bool) -> None:
    settings = {"api_keys": KEY_A, "auth_exempt_health": health, "auth_exempt_metrics": metrics}
    with client(FakeBackend(), **settings) as c:
        for path in ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready"):
            assert (c.get(path).status_code != 401) is health, path
        assert (c.get("/metrics").status_code == 200) is metrics
        assert c.get("/metrics", headers={"X-API-Key": KEY_A}).status_code == 200
        assert c.get("/openapi.json").status_code == 200


def _write_keys(path: Path, keys: list[str], stamp_ns: int) -> None:
    path.write_text("# rotated keys\n" + "".join(f"{k}\n" for k in keys) + "\n")
    os.utime(path, ns=(stamp_ns, stamp_ns))  # a distinct mtime even within the file system's granularity


def test_key_file_rotates_without_restart(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    _write_keys(keys, [KEY_A], 1_000_000_000)
    with client(FakeBackend(), api_keys_file=keys) as c:
        wait_ready(c)

        def status(key: str) -> int:
            return c.get("/v1/models", headers={"X-API-Key": key}).status_code

        assert (status(KEY_A), status(KEY_B)) == (200, 401)
        _write_keys(keys, [KEY_A, KEY_B], 2_000_000_000)  # both during the switch-over
        assert (status(KEY_A), status(KEY_B)) == (200, 200)
        _write_keys(keys, [KEY_B], 3_000_000_000)
        assert (status(KEY_A), status(KEY_B)) == (401, 200)
        keys.unlink()  # a file that goes away keeps its last keys
        assert (status(KEY_A), status(KEY_B)) == (401, 200)


def test_every_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = auth.ApiKeys([KEY_A, KEY_B], None)
    assert keys.accepts(KEY_A)
    assert len(compared) == 2  # no early exit on the first match
    assert {len(a) for a, _ in compared} == {32}  # digests: the length of a guess tells nothing
    assert not keys.accepts(KEY_A[:-1])


def test_unreadable_key_file_exits_2_with_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "faseg.service", "--port", str(free_port()), "--model", "m.onnx"]
    command += ["--api-keys-file", str(tmp_path / "missing.txt")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 2 and "Traceback" not in output
    assert len(output.splitlines()) == 1 and "cannot read the API key file" in output


def test_cors_origins_by_setting() -> None:
    origin = "https://app.example"
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key",
    }
    with client(FakeBackend(), cors_origins=origin, api_keys=KEY_A) as c:
        answer = c.options("/v1/segment", headers=preflight)
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == origin
        refused = c.get("/v1/models", headers={"Origin": origin})  # a browser can read the 401 too
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == origin
        other = c.options("/v1/segment", headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    with client(FakeBackend()) as c:
        assert "access-control-allow-origin" not in c.get("/livez", headers={"Origin": origin}).headers
