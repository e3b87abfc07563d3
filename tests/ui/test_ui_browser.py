"""The demo page in a real browser (headless Chromium through selenium) against a real server on the demo
model. Every test fails on errors in the page's console; the last one proves that check can fail.

Skips with the reason when selenium, Chromium or chromedriver is missing (``apt-get install chromium
chromium-driver``). Screenshots go to ``runs/ui-tests/`` (or ``$FASEG_UI_ARTEFACTS``); ``ui.png`` there is the
README's ``docs/img/ui.png``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from ui_browser import (
    FAILED_RESOURCE,
    SHARE,
    assert_no_console_errors,
    console_errors,
    find_browser,
    is_shown,
    legend,
    start_chromium,
    support_ui,
    visible_text,
    wait_for,
    webdriver,
)

from faseg.bench.service_bench import ServerProcess

DESKTOP = (1280, 1000)
PHONE = (390, 844)  # CSS pixels of a current phone in portrait
SAMPLES = ("astronaut", "coffee", "chelsea")
README_SCREENSHOT_MAX_BYTES = 300_000
INJECTED = "injected-by-the-ui-test"
CHROMIUM, CHROMEDRIVER = find_browser()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Any]:
    driver = start_chromium(CHROMIUM, CHROMEDRIVER, width=DESKTOP[0], height=DESKTOP[1], downloads=downloads)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: Any, demo_server: ServerProcess) -> Iterator[Any]:
    """The page freshly loaded at desktop size with its models listed; fails the test on console errors
    unless the test read them itself."""
    browser.set_window_size(*DESKTOP)
    open_page(browser, demo_server.url + "/")
    yield browser
    assert_no_console_errors(browser)


def open_page(driver: Any, url: str) -> None:
    console_errors(driver)  # drain what earlier tests left
    driver.get(url)
    wait_for(driver, lambda d: d.execute_script("return !document.getElementById('file-input').disabled"), "models")


def upload(driver: Any, path: Path) -> None:
    driver.find_element("id", "file-input").send_keys(str(path))


def wait_for_answer(driver: Any, name: str) -> None:
    wait_for(
        driver,
        lambda d: is_shown(d, "result") and visible_text(d, "status").startswith(name + ":"),
        f"the segmentation of {name}",
    )


def api_segment(api: httpx.Client, data: bytes, name: str, outputs: str) -> dict[str, Any]:
    response = api.post(f"/v1/segment?outputs={outputs}", files={"image": (name, data)})
    assert response.status_code == 200, response.text
    return response.json()


def api_labels(api: httpx.Client, data: bytes, name: str) -> np.ndarray:
    """The API's label map (H, W) of class ids for ``data``."""
    answer = api_segment(api, data, name, "png")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["png"]))))


def palette(api: httpx.Client) -> np.ndarray:
    [model] = api.get("/v1/models").json()["models"]
    return np.array([c["color"] for c in model["classes"]], dtype=np.uint8)


def assert_legend_matches(shown: list[tuple[str, str]], stats: list[dict[str, Any]]) -> None:
    """Same classes, in order of share, each share as the API's fraction rounded to 0.1 %."""
    expected = sorted(stats, key=lambda s: -s["fraction"])
    assert [name for name, _ in shown] == [s["name"] for s in expected]
    for (name, share), entry in zip(shown, expected):
        match = SHARE.match(share)
        assert match, f"{name}: share {share!r}"
        percent = 100 * entry["fraction"]
        if match.group(1):  # "< 0.1 %"
            assert 0 < percent < 0.1, (name, share, percent)
        else:
            assert abs(float(match.group(2)) - percent) <= 0.05 + 1e-9, (name, share, percent)


def canvas_pixels(driver: Any) -> np.ndarray:
    """The label canvas as drawn, (H, W, 3)."""
    url = driver.execute_script("return document.getElementById('labels').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def uniform_points(labels: np.ndarray, radius: int, count: int) -> list[tuple[int, int]]:
    """(x, y) of up to ``count`` pixels, one per class (largest first), whose square neighbourhood of
    ``radius`` holds that class only, so a pointer landing a little off still reads it."""
    height, width = labels.shape
    ids, pixels = np.unique(labels, return_counts=True)
    points = []
    for class_id in ids[np.argsort(-pixels)]:
        mask = labels == class_id
        for y in range(radius, height - radius, max(1, radius)):
            row = [
                x
                for x in range(radius, width - radius, max(1, radius))
                if mask[y - radius : y + radius + 1, x - radius : x + radius + 1].all()
            ]
            if row:
                points.append((row[len(row) // 2], y))
                break
        if len(points) == count:
            break
    return points


def test_the_page_loads_without_console_errors(page: Any, api: httpx.Client) -> None:
    [model] = api.get("/v1/models").json()["models"]
    assert page.title.startswith("FASeg")
    assert model["name"] in visible_text(page, "model-summary")
    assert not is_shown(page, "model-picker")  # one model, one version, one input size
    assert not is_shown(page, "result") and not is_shown(page, "error")


def test_an_uploaded_photograph_gives_the_apis_classes_and_label_map(
    page: Any, api: httpx.Client, photographs: dict[str, bytes], tmp_path: Path, downloads: Path
) -> None:
    data = photographs["rocket.jpg"]
    path = tmp_path / "rocket.jpg"
    path.write_bytes(data)
    upload(page, path)
    wait_for_answer(page, "rocket.jpg")

    assert_legend_matches(legend(page), api_segment(api, data, "rocket.jpg", "stats")["stats"])
    # The overlay is the API's label map in the model's palette, pixel for pixel.
    labels = api_labels(api, data, "rocket.jpg")
    np.testing.assert_array_equal(canvas_pixels(page), palette(api)[labels])
    timings = visible_text(page, "timings")
    for stage in ("decode", "infer", "total", "round trip"):
        assert stage in timings

    # The slider changes the overlay's opacity, from the keyboard too.
    slider = page.find_element("id", "opacity")
    slider.send_keys(webdriver.Keys.ARROW_LEFT)
    assert page.execute_script("return document.getElementById('labels').style.opacity") == "0.55"
    assert visible_text(page, "opacity-value") == "55 %"

    # Downloads: the PNG is the API's label map, the JSON its answer.
    page.find_element("id", "download-png").click()
    page.find_element("id", "download-json").click()
    png = wait_for(page, lambda d: downloaded(downloads / "rocket-labels.png"), "the PNG download")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), labels)
    saved = json.loads(wait_for(page, lambda d: downloaded(downloads / "rocket-segmentation.json"), "the JSON"))
    assert saved["stats"] == api_segment(api, data, "rocket.jpg", "stats")["stats"]
    assert base64.b64decode(saved["png"]) == png


def downloaded(path: Path) -> bytes | None:
    """The file's bytes once Chromium has finished writing it (it writes to ``<name>.crdownload`` first)."""
    partial = path.with_name(path.name + ".crdownload")
    return path.read_bytes() if path.is_file() and not partial.exists() else None


def test_pointing_and_arrow_keys_read_the_class_under_them(page: Any, api: httpx.Client) -> None:
    page.find_element("css selector", "button[data-sample=coffee]").click()
    wait_for_answer(page, "coffee.jpg")
    data = api.get("/ui/static/samples/coffee.jpg").content
    labels = api_labels(api, data, "coffee.jpg")
    names = [c["name"] for c in api.get("/v1/models").json()["models"][0]["classes"]]
    canvas = page.find_element("id", "labels")
    box = page.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    height, width = labels.shape
    scale = max(width / box[0], height / box[1])  # label pixels per CSS pixel as displayed

    # Keyboard: on a fresh answer the first arrow key reads the middle pixel, the next moves right.
    canvas.send_keys(webdriver.Keys.ARROW_RIGHT)
    x, y = width // 2, height // 2
    assert visible_text(page, "probe") == f"{names[labels[y, x]]} (class {labels[y, x]}) at x {x}, y {y}"
    canvas.send_keys(webdriver.Keys.ARROW_RIGHT)
    x += max(1, round(width / 50))
    assert visible_text(page, "probe") == f"{names[labels[y, x]]} (class {labels[y, x]}) at x {x}, y {y}"

    points = uniform_points(labels, radius=math.ceil(2 * scale) + 1, count=3)
    assert len(points) >= 2, "the demo model should find at least two sizeable classes in coffee.jpg"
    for x, y in points:
        # The pointer goes to the centre of label pixel (x, y), in CSS pixels from the canvas' centre.
        dx = round((x + 0.5) * box[0] / width - box[0] / 2)
        dy = round((y + 0.5) * box[1] / height - box[1] / 2)
        webdriver.ActionChains(page).move_to_element_with_offset(canvas, dx, dy).perform()
        expected = names[labels[y, x]]
        text = visible_text(page, "probe")
        assert text.startswith(f"{expected} (class {labels[y, x]}) at x "), (x, y, text)
        shown_x, shown_y = (int(v) for v in text.split(" at x ")[1].split(", y "))
        assert abs(shown_x - x) <= scale + 1 and abs(shown_y - y) <= scale + 1, (x, y, text)


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [("rocket-large.png", 413, "PAYLOAD_TOO_LARGE"), ("rocket.gif", 415, "UNSUPPORTED_MEDIA_TYPE")],
)
def test_an_api_error_shows_the_apis_message(
    browser: Any,
    demo_server: ServerProcess,
    api: httpx.Client,
    photographs: dict[str, bytes],
    tmp_path: Path,
    name: str,
    status: int,
    code: str,
) -> None:
    open_page(browser, demo_server.url + "/")
    path = tmp_path / name
    path.write_bytes(photographs[name])
    upload(browser, path)
    wait_for(browser, lambda d: is_shown(d, "error"), f"the {status} message")
    shown = visible_text(browser, "error")
    answer = api.post("/v1/segment?outputs=stats,png", files={"image": (name, photographs[name])})
    assert answer.status_code == status
    message = answer.json()["error"]["message"]
    assert shown.startswith(f"{status} {code}: ")
    if status == 413:  # the declared size differs by the multipart boundary; the rest is the API's message
        cap = api.get("/v1/models").json()["models"][0]["settings"]["max_body_bytes"]
        assert shown.endswith(f"bytes; the limit is {cap}") and message.endswith(f"bytes; the limit is {cap}")
    else:
        assert shown == f"{status} {code}: {message}"
    assert not is_shown(browser, "result")
    # Chromium logs the refused request itself; nothing else may appear.
    assert_no_console_errors(browser, allowed=[FAILED_RESOURCE.format(status=status)])


def test_every_sample_photograph_is_segmented_from_the_keyboard(page: Any, api: httpx.Client) -> None:
    for sample in SAMPLES:
        button = page.find_element("css selector", f"button[data-sample={sample}]")
        button.send_keys(webdriver.Keys.ENTER)
        wait_for_answer(page, f"{sample}.jpg")
        data = api.get(f"/ui/static/samples/{sample}.jpg").content
        assert_legend_matches(legend(page), api_segment(api, data, f"{sample}.jpg", "stats")["stats"])


def test_a_dropped_photograph_is_segmented(page: Any, api: httpx.Client, photographs: dict[str, bytes]) -> None:
    data = photographs["rocket.jpg"]
    # Selenium cannot drag a file from the desktop; the page receives the same drop event it would.
    page.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "const transfer = new DataTransfer();"
        "transfer.items.add(new File([bytes], 'dropped.jpg', {type: 'image/jpeg'}));"
        "const zone = document.getElementById('drop-zone');"
        "zone.dispatchEvent(new DragEvent('dragover', {bubbles: true, cancelable: true, dataTransfer: transfer}));"
        "zone.dispatchEvent(new DragEvent('drop', {bubbles: true, cancelable: true, dataTransfer: transfer}));",
        base64.b64encode(data).decode(),
    )
    wait_for_answer(page, "dropped.jpg")
    assert_legend_matches(legend(page), api_segment(api, data, "dropped.jpg", "stats")["stats"])


def test_tab_reaches_every_control_in_reading_order(page: Any) -> None:
    page.find_element("css selector", "button[data-sample=chelsea]").click()
    wait_for_answer(page, "chelsea.jpg")
    page.execute_script("document.getElementById('file-input').focus()")  # the first control on the page
    order = []
    for _ in range(9):
        order.append(
            page.execute_script(
                "const e = document.activeElement; return e.id || (e.dataset.sample && 'sample:' + e.dataset.sample)"
                " || e.textContent.trim();"
            )
        )
        webdriver.ActionChains(page).send_keys(webdriver.Keys.TAB).perform()
    assert order == [
        "file-input",
        "sample:astronaut",
        "sample:coffee",
        "sample:chelsea",
        "labels",
        "opacity",
        "download-png",
        "download-json",
        "/docs",
    ]


# Stands in for a server with a model repository: GET /v1/models lists two versions of the demo model and a
# second model with two input sizes; segment requests are recorded, then sent on without the choice (this
# server has one model).
SEVERAL_MODELS = """
const realFetch = window.fetch.bind(window);
window.segmentUrls = [];
window.fetch = async (url, init) => {
  const path = String(url);
  if (path.endsWith("v1/models")) {
    const body = await (await realFetch(url, init)).json();
    const demo = body.models[0];
    body.models = [demo, {...demo, version: "2"}, {...demo, name: "second", buckets: [[256, 256], [256, 512]]}];
    return new Response(JSON.stringify(body), {headers: {"Content-Type": "application/json"}});
  }
  if (path.startsWith("v1/segment")) {
    window.segmentUrls.push(path);
    return realFetch("v1/segment?outputs=stats,png", init);
  }
  return realFetch(url, init);
};
"""


def test_the_picker_offers_what_the_models_list_holds(
    browser: Any, demo_server: ServerProcess, api: httpx.Client
) -> None:
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": SEVERAL_MODELS})
    try:
        open_page(browser, demo_server.url + "/")
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})
    select = support_ui.Select
    models = select(browser.find_element("id", "model-select"))
    assert [o.text for o in models.options][1] == "second" and is_shown(browser, "model-picker")
    assert is_shown(browser, "version-choice") and not is_shown(browser, "bucket-choice")  # two versions, one size
    select(browser.find_element("id", "version-select")).select_by_value("2")
    browser.find_element("css selector", "button[data-sample=coffee]").click()
    wait_for_answer(browser, "coffee.jpg")

    models.select_by_value("second")
    assert not is_shown(browser, "version-choice") and is_shown(browser, "bucket-choice")  # one version, two sizes
    select(browser.find_element("id", "bucket-select")).select_by_value("256x512")
    browser.find_element("css selector", "button[data-sample=chelsea]").click()
    wait_for_answer(browser, "chelsea.jpg")
    demo = api.get("/v1/models").json()["models"][0]["name"]
    assert browser.execute_script("return window.segmentUrls") == [
        f"v1/segment?outputs=stats%2Cpng&model={demo}&version=2",
        "v1/segment?outputs=stats%2Cpng&model=second&bucket=256x512",
    ]
    assert_no_console_errors(browser)


UNKNOWN_COLOR = (255, 0, 255)  # what the page draws for a class id the model does not list


def label_png(ids: np.ndarray, bit_depth: int) -> bytes:
    """A label PNG as the API may send one (palette at 1–8 bits, 16-bit greyscale past 256 classes), written
    here with every scanline filter in turn (row y uses filter y % 5), which Pillow alone would not produce."""
    height, width = ids.shape
    if bit_depth == 16:
        raw_rows = [row.astype(">u2").tobytes() for row in ids]
    else:
        per_byte = 8 // bit_depth
        padded = np.zeros((height, -(-width // per_byte) * per_byte), dtype=np.uint8)
        padded[:, :width] = ids
        groups = padded.reshape(height, -1, per_byte)
        shifts = np.arange(per_byte - 1, -1, -1) * bit_depth
        raw_rows = [bytes((groups[y] << shifts).sum(axis=1).astype(np.uint8)) for y in range(height)]
    step = max(1, bit_depth // 8)
    previous = bytes(len(raw_rows[0]))
    data = bytearray()
    for y, row in enumerate(raw_rows):
        kind = y % 5
        data.append(kind)
        for i, value in enumerate(row):
            left = row[i - step] if i >= step else 0
            up = previous[i]
            up_left = previous[i - step] if i >= step else 0
            estimate = left + up - up_left
            paeth = min(
                (abs(estimate - left), 0, left), (abs(estimate - up), 1, up), (abs(estimate - up_left), 2, up_left)
            )
            predictor = (0, left, up, (left + up) // 2, paeth[2])[kind]
            data.append((value - predictor) % 256)
        previous = row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    color_type = 0 if bit_depth == 16 else 3
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    palette = chunk(b"PLTE", bytes(3 * 2**bit_depth)) if color_type == 3 else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + palette
        + chunk(b"IDAT", zlib.compress(bytes(data)))
        + chunk(b"IEND", b"")
    )


# Replaces the label PNG of the next answer by the test's own; everything else is the server's answer.
REPLACE_LABEL_PNG = """
const realFetch = window.fetch.bind(window);
window.fetch = async (url, init) => {
  if (!String(url).startsWith("v1/segment")) return realFetch(url, init);
  const answer = await (await realFetch(url, init)).json();
  answer.png = "%s";
  return new Response(JSON.stringify(answer), {headers: {"Content-Type": "application/json"}});
};
"""


@pytest.mark.parametrize("bit_depth", [1, 2, 4, 8, 16])
def test_every_label_png_layout_is_decoded_exactly(
    browser: Any, demo_server: ServerProcess, api: httpx.Client, bit_depth: int
) -> None:
    rng = np.random.default_rng(bit_depth)
    colors = palette(api)
    top = 300 if bit_depth == 16 else 2**bit_depth  # ids past the model's classes are drawn in UNKNOWN_COLOR
    ids = rng.integers(0, top, size=(23, 37))  # an odd width leaves the last byte of a row partly filled
    ids[0, :2] = [0, top - 1]
    encoded = label_png(ids, bit_depth)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encoded))), ids)  # Pillow agrees: a valid PNG
    png = base64.b64encode(encoded).decode()
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": REPLACE_LABEL_PNG % png})
    try:
        open_page(browser, demo_server.url + "/")
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})
    browser.find_element("css selector", "button[data-sample=chelsea]").click()
    wait_for_answer(browser, "chelsea.jpg")
    lookup = np.array([colors[i] if i < len(colors) else UNKNOWN_COLOR for i in range(ids.max() + 1)], np.uint8)
    np.testing.assert_array_equal(canvas_pixels(browser), lookup[ids])
    assert_no_console_errors(browser)


def test_screenshots_at_desktop_and_phone_sizes(page: Any, demo_server: ServerProcess, artefacts: Path) -> None:
    page.find_element("css selector", "button[data-sample=astronaut]").click()
    wait_for_answer(page, "astronaut.jpg")
    canvas = page.find_element("id", "labels")
    webdriver.ActionChains(page).move_to_element_with_offset(canvas, 20, -60).perform()
    fit_window_to_page(page, DESKTOP[0])
    desktop = artefacts / "ui-1280.png"
    page.save_screenshot(str(desktop))
    screenshot = Image.open(desktop)
    assert screenshot.width == DESKTOP[0]
    # The README's copy: fewer colours, same pixels' layout, small enough to commit.
    readme = artefacts / "ui.png"
    screenshot.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(readme, optimize=True)
    assert readme.stat().st_size < README_SCREENSHOT_MAX_BYTES

    # Phone size: one column, nothing wider than the screen.
    page.set_window_size(*PHONE)
    width = page.execute_script("return window.innerWidth")
    assert page.execute_script("return document.documentElement.scrollWidth") <= width
    views = page.execute_script(
        "return Array.from(document.querySelectorAll('.view')).map(v => v.getBoundingClientRect().left)"
    )
    assert len(set(views)) == 1, "on a phone the photograph and the segmentation stack in one column"
    fit_window_to_page(page, PHONE[0])
    page.save_screenshot(str(artefacts / "ui-phone.png"))


def fit_window_to_page(driver: Any, width: int) -> None:
    """Make the viewport ``width`` CSS pixels wide and as tall as the whole page, for a full-page screenshot."""
    driver.set_window_size(width, DESKTOP[1])
    for _ in range(2):  # the page's height depends on its width; the window's frame on neither
        frame = driver.get_window_size()["height"] - driver.execute_script("return window.innerHeight")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, height + frame)


@pytest.mark.parametrize(
    "source",
    [
        f"window.addEventListener('load', () => {{ throw new Error('{INJECTED}'); }});",
        f"window.addEventListener('load', () => Promise.reject(new Error('{INJECTED}')));",
        f"console.error('{INJECTED}');",
    ],
    ids=["uncaught-error", "unhandled-rejection", "console-error"],
)
def test_the_console_check_fails_on_javascript_errors(browser: Any, demo_server: ServerProcess, source: str) -> None:
    """Without this, a console check that never sees anything would pass every test above."""
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})
    try:
        open_page(browser, demo_server.url + "/")
        with pytest.raises(AssertionError, match=INJECTED):
            assert_no_console_errors(browser)
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})
    open_page(browser, demo_server.url + "/")
    assert_no_console_errors(browser)  # and the page itself is clean again
