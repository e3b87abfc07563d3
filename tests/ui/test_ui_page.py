"""The demo page without a browser: how it is served, that the setting turns it off, that it references
nothing outside the server, and that the wheel ships every file of it."""

from __future__ import annotations

import argparse
import fnmatch
import io
import re
import tomllib
from pathlib import Path

import pytest
from faseg.service import Settings, create_app
from faseg.service.cli import add_arguments, settings_from_args
from faseg.service.ui import INDEX_FILE, STATIC_DIR
from fastapi.testclient import TestClient
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TEXT_SUFFIXES = (".html", ".js", ".css")
# Anything that would make the browser fetch from elsewhere: absolute or protocol-relative URLs, CSS imports.
EXTERNAL = re.compile(r"https?://|(?:src|href)\s*=\s*[\"']//|url\(\s*[\"']?//|@import", re.IGNORECASE)
SAMPLE_MAX_BYTES = 60_000
# The model file is never opened: without `with`, TestClient does not run the lifespan that loads it.
UNLOADED_MODEL = Path("never-loaded.onnx")


def client(**settings: object) -> TestClient:
    return TestClient(create_app(Settings(model=UNLOADED_MODEL, **settings)))


def referenced_assets(html: str) -> list[str]:
    return re.findall(r"(?:src|href)=\"(ui/static/[^\"]+)\"", html)


@pytest.mark.parametrize("path", ["/", "/ui"])
def test_the_page_is_served_as_html_with_a_strict_policy(path: str) -> None:
    response = client().get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text == INDEX_FILE.read_text()
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    head = client().head(path)
    assert head.status_code == 200 and head.content == b""


def test_every_asset_the_page_references_is_served_with_its_type() -> None:
    app = client()
    html = app.get("/").text
    assets = referenced_assets(html)
    assert {"ui/static/app.js", "ui/static/app.css"} <= set(assets)
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".jpg": "image/jpeg"}
    for asset in assets:
        response = app.get("/" + asset)
        assert response.status_code == 200, asset
        assert response.headers["content-type"] == types[Path(asset).suffix], asset
        assert response.content == (STATIC_DIR / asset.removeprefix("ui/static/")).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/ui/static/missing.js",
        "/ui/static/make_samples.py",
        "/ui/static/../__init__.py",
        "/ui/static/%2e%2e/__init__.py",
    ],
)
def test_only_the_static_files_are_served(path: str) -> None:
    response = client().get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"


def test_the_setting_turns_the_page_off() -> None:
    app = client(ui=False)
    for path in ("/", "/ui", "/ui/static/app.js"):
        response = app.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "NOT_FOUND"
    assert app.get("/openapi.json").status_code == 200  # the API itself is unaffected


def test_the_flag_and_the_environment_reach_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert settings_from_args(parser.parse_args([])).ui is True
    assert settings_from_args(parser.parse_args(["--no-ui"])).ui is False
    monkeypatch.setenv("FASEG_UI", "false")
    assert Settings().ui is False
    assert settings_from_args(parser.parse_args(["--ui"])).ui is True  # the flag wins over the environment


def test_the_page_is_not_part_of_the_api_schema() -> None:
    paths = client().get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui")]


def test_the_page_references_nothing_outside_the_server() -> None:
    files = sorted(p for p in STATIC_DIR.rglob("*") if p.suffix in TEXT_SUFFIXES)
    assert {p.name for p in files} == {"index.html", "app.js", "app.css"}
    for path in files:
        found = EXTERNAL.findall(path.read_text())
        assert not found, f"{path.name} references {found}"


def test_the_external_url_check_catches_what_it_should() -> None:
    for text in ('<script src="https://cdn.example/x.js">', "<img src='//cdn.example/a.png'>", "@import 'x.css';"):
        assert EXTERNAL.search(text), text
    assert not EXTERNAL.search('<script src="ui/static/app.js">')


def test_the_sample_photographs_are_small_jpegs_the_page_offers() -> None:
    html = INDEX_FILE.read_text()
    offered = set(re.findall(r'data-sample="([a-z]+)"', html))
    shipped = {p.stem for p in (STATIC_DIR / "samples").glob("*.jpg")}
    assert offered == shipped and len(offered) >= 2
    for name in shipped:
        data = (STATIC_DIR / "samples" / f"{name}.jpg").read_bytes()
        assert len(data) < SAMPLE_MAX_BYTES, name
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and max(image.size) <= 512


def test_the_wheel_ships_every_static_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["faseg.service.ui"]
    package_dir = ROOT / config["package-dir"]["faseg.service.ui"]
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            relative = path.relative_to(package_dir).as_posix()
            matches = [p for p in patterns if p.count("/") == relative.count("/") and fnmatch.fnmatch(relative, p)]
            assert matches, f"{relative} is not package data"
