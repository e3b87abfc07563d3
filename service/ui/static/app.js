// The demo page: pick or drop a photograph, send it to POST /v1/segment?outputs=stats,png, and show the
// photograph, the label map over it (opacity slider), the classes present, the class under the pointer,
// the timings and the downloads. It uses only the public API (GET /v1/models, POST /v1/segment) and
// nothing outside this server. Paths are relative, so the page also works behind a path prefix.
"use strict";

(() => {
  const MODELS_URL = "v1/models";
  const SEGMENT_URL = "v1/segment";
  const SAMPLES_URL = "ui/static/samples/";
  const OUTPUTS = "stats,png";
  const NOT_READY_RETRY_S = 2; // when the server answers 503 without Retry-After
  const UNREACHABLE_RETRY_S = 5;
  const KEY_STEPS = 50; // arrow keys move the probe by 1/KEY_STEPS of the image (Shift: 5×)
  const UNKNOWN_COLOR = [255, 0, 255]; // a class id the model did not list (never expected)

  const $ = (id) => document.getElementById(id);
  const el = {
    summary: $("model-summary"),
    dropZone: $("drop-zone"),
    fileInput: $("file-input"),
    samples: Array.from(document.querySelectorAll("button[data-sample]")),
    picker: $("model-picker"),
    modelChoice: $("model-choice"),
    versionChoice: $("version-choice"),
    bucketChoice: $("bucket-choice"),
    modelSelect: $("model-select"),
    versionSelect: $("version-select"),
    bucketSelect: $("bucket-select"),
    status: $("status"),
    error: $("error"),
    result: $("result"),
    photo: $("photo"),
    overlayBase: $("overlay-base"),
    labels: $("labels"),
    marker: $("probe-marker"),
    opacity: $("opacity"),
    opacityValue: $("opacity-value"),
    probe: $("probe"),
    legend: $("legend"),
    timings: $("timings"),
    answerMeta: $("answer-meta"),
    downloadPng: $("download-png"),
    downloadJson: $("download-json"),
  };

  const state = {
    models: [], // the entries of GET /v1/models
    labelMap: null, // {width, height, ids: Uint16Array} of the shown answer
    classes: new Map(), // class id → {id, name, color} of the model that made the shown answer
    probe: null, // {x, y} in label-map pixels, moved by the keyboard
    objectUrls: [], // photo and downloads of the shown answer, revoked when replaced
    request: 0, // number of the latest request; older answers are dropped
  };

  // ---------------------------------------------------------------------------------------------------------
  // Label map PNG: decoded here (not by <img>), so every pixel gives its exact class id. The API writes palette
  // PNGs (pixel value = class id) up to 256 classes and 16-bit greyscale beyond; both are handled.

  const PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];

  async function decodeLabelPng(bytes) {
    if (!PNG_SIGNATURE.every((b, i) => bytes[i] === b)) throw new Error("the label map is not a PNG");
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let header = null;
    const idat = [];
    for (let at = 8; at + 8 <= bytes.length; ) {
      const length = view.getUint32(at);
      const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
      const data = bytes.subarray(at + 8, at + 8 + length);
      if (type === "IHDR") {
        header = {
          width: view.getUint32(at + 8),
          height: view.getUint32(at + 12),
          bitDepth: data[8],
          colorType: data[9],
          interlace: data[12],
        };
      } else if (type === "IDAT") {
        idat.push(data);
      } else if (type === "IEND") {
        break;
      }
      at += 12 + length; // length, type, data, CRC
    }
    if (!header) throw new Error("the label map PNG has no header");
    const { width, height, bitDepth, colorType, interlace } = header;
    const palette = colorType === 3 && [1, 2, 4, 8].includes(bitDepth);
    const grey = colorType === 0 && [8, 16].includes(bitDepth);
    if (!(palette || grey) || interlace !== 0) {
      throw new Error(`unexpected label map PNG (colour type ${colorType}, ${bitDepth} bits, interlace ${interlace})`);
    }
    if (typeof DecompressionStream === "undefined") {
      throw new Error("this browser cannot inflate PNG data (no DecompressionStream); use a current browser");
    }
    const inflated = new Uint8Array(
      await new Response(new Blob(idat).stream().pipeThrough(new DecompressionStream("deflate"))).arrayBuffer(),
    );
    const stride = Math.ceil((width * bitDepth) / 8); // bytes of one row, without its filter byte
    if (inflated.length < height * (stride + 1)) throw new Error("the label map PNG is truncated");
    const step = Math.max(1, bitDepth / 8); // bytes per pixel, as the PNG filters count them
    const ids = new Uint16Array(width * height);
    let previous = new Uint8Array(stride);
    for (let y = 0; y < height; y++) {
      const row = unfilter(inflated.subarray(y * (stride + 1), (y + 1) * (stride + 1)), previous, step);
      unpackRow(row, bitDepth, width, ids, y * width);
      previous = row;
    }
    return { width, height, ids };
  }

  // One PNG scanline, filter byte first, back to its raw bytes (PNG spec §9: None, Sub, Up, Average, Paeth).
  function unfilter(line, previous, step) {
    const filter = line[0];
    const row = line.slice(1);
    for (let i = 0; i < row.length; i++) {
      const left = i >= step ? row[i - step] : 0;
      const up = previous[i];
      const upLeft = i >= step ? previous[i - step] : 0;
      let predictor;
      switch (filter) {
        case 0: predictor = 0; break;
        case 1: predictor = left; break;
        case 2: predictor = up; break;
        case 3: predictor = (left + up) >> 1; break;
        case 4: {
          const p = left + up - upLeft;
          const pa = Math.abs(p - left);
          const pb = Math.abs(p - up);
          const pc = Math.abs(p - upLeft);
          predictor = pa <= pb && pa <= pc ? left : pb <= pc ? up : upLeft;
          break;
        }
        default: throw new Error(`the label map PNG has an unknown filter ${filter}`);
      }
      row[i] = (row[i] + predictor) & 0xff;
    }
    return row;
  }

  function unpackRow(row, bitDepth, width, ids, offset) {
    if (bitDepth === 8) {
      ids.set(row.subarray(0, width), offset);
    } else if (bitDepth === 16) {
      for (let x = 0; x < width; x++) ids[offset + x] = (row[2 * x] << 8) | row[2 * x + 1];
    } else {
      const mask = (1 << bitDepth) - 1;
      for (let x = 0; x < width; x++) {
        const bit = x * bitDepth;
        ids[offset + x] = (row[bit >> 3] >> (8 - bitDepth - (bit & 7))) & mask;
      }
    }
  }

  function base64Bytes(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Talking to the API

  // The API's error as {status, code, message, retryAfter}: native routes send {"error": {code, message,
  // retry_after_s}}, /v2 routes {"error": "..."}; anything else (a proxy's page, uvicorn's plain 503) is
  // shown by its status and first characters.
  async function apiError(response) {
    const text = await response.text();
    let error = null;
    try {
      error = JSON.parse(text).error;
    } catch (_) {
      // not JSON: fall through to the text
    }
    const retryHeader = response.headers.get("Retry-After");
    if (error && typeof error === "object") {
      return {
        status: response.status,
        code: error.code || response.statusText,
        message: error.message || "",
        retryAfter: error.retry_after_s ?? (retryHeader ? Number(retryHeader) : null),
      };
    }
    return {
      status: response.status,
      code: response.statusText || "HTTP error",
      message: typeof error === "string" ? error : text.trim().slice(0, 300),
      retryAfter: retryHeader ? Number(retryHeader) : null,
    };
  }

  function showError(error) {
    const retry = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : "";
    el.error.textContent = "";
    const title = document.createElement("strong");
    title.textContent = `${error.status} ${error.code}`;
    el.error.append(title, document.createTextNode(`: ${error.message}${retry}`));
    el.error.hidden = false;
  }

  function clearError() {
    el.error.hidden = true;
    el.error.textContent = "";
  }

  function setStatus(text) {
    el.status.textContent = text;
  }

  async function loadModels() {
    let response;
    try {
      response = await fetch(MODELS_URL, { headers: { Accept: "application/json" } });
    } catch (err) {
      el.summary.textContent = `Cannot reach the server (${err.message}); trying again in ${UNREACHABLE_RETRY_S} s.`;
      setTimeout(loadModels, UNREACHABLE_RETRY_S * 1000);
      return;
    }
    if (!response.ok) {
      const error = await apiError(response);
      const wait = error.retryAfter || NOT_READY_RETRY_S;
      el.summary.textContent = `${error.status} ${error.code}: ${error.message} (trying again in ${wait} s)`;
      setTimeout(loadModels, wait * 1000);
      return;
    }
    state.models = (await response.json()).models || [];
    fillModelChoices();
    setControlsEnabled(state.models.length > 0);
    if (!state.models.length) el.summary.textContent = "The server lists no model.";
  }

  // ---------------------------------------------------------------------------------------------------------
  // Model, version and input size: read from whatever GET /v1/models lists; each choice shows only when
  // there is more than one option, and the whole picker hides with a single model.

  const modelNames = () => [...new Set(state.models.map((m) => m.name))];
  const versionsOf = (name) => state.models.filter((m) => m.name === name);
  const bucketLabel = (bucket) => bucket.join("x");

  function setOptions(select, values, labels) {
    const previous = select.value;
    select.textContent = "";
    values.forEach((value, i) => select.add(new Option(labels ? labels[i] : value, value)));
    if (values.includes(previous)) select.value = previous;
  }

  function fillModelChoices() {
    setOptions(el.modelSelect, modelNames());
    fillVersionChoices();
  }

  function fillVersionChoices() {
    setOptions(el.versionSelect, versionsOf(el.modelSelect.value).map((m) => String(m.version)));
    fillBucketChoices();
  }

  function fillBucketChoices() {
    const buckets = (selectedModel() || {}).buckets || [];
    const values = ["auto", ...buckets.map(bucketLabel)];
    setOptions(el.bucketSelect, values, ["automatic", ...buckets.map((b) => b.join(" × "))]);
    el.modelChoice.hidden = el.modelSelect.options.length < 2;
    el.versionChoice.hidden = el.versionSelect.options.length < 2;
    el.bucketChoice.hidden = buckets.length < 2;
    el.picker.hidden = el.modelChoice.hidden && el.versionChoice.hidden && el.bucketChoice.hidden;
    describeModel();
  }

  function selectedModel() {
    return versionsOf(el.modelSelect.value).find((m) => String(m.version) === el.versionSelect.value) || null;
  }

  function describeModel() {
    const model = selectedModel();
    if (!model) return;
    const size = (model.input_size || []).join(" × ");
    const ready = model.ready === false ? " (warming up)" : "";
    el.summary.textContent =
      `Model ${model.name}, version ${model.version}: ${model.classes.length} classes, input ${size}, ` +
      `${model.backend} on ${model.device}${ready}`;
  }

  function segmentUrl() {
    const params = new URLSearchParams({ outputs: OUTPUTS });
    if (!el.modelChoice.hidden) params.set("model", el.modelSelect.value);
    if (!el.versionChoice.hidden) params.set("version", el.versionSelect.value);
    if (!el.bucketChoice.hidden && el.bucketSelect.value !== "auto") params.set("bucket", el.bucketSelect.value);
    return `${SEGMENT_URL}?${params}`;
  }

  function setControlsEnabled(enabled) {
    el.fileInput.disabled = !enabled;
    el.samples.forEach((button) => (button.disabled = !enabled));
  }

  // ---------------------------------------------------------------------------------------------------------
  // One segmentation: send, then show

  async function segment(file, name) {
    const number = ++state.request;
    const model = selectedModel();
    if (!model) return;
    clearError();
    setStatus(`Segmenting ${name} (${formatBytes(file.size)})…`);
    el.result.setAttribute("aria-busy", "true");
    const form = new FormData();
    form.append("image", file, name);
    const started = performance.now();
    let response;
    try {
      response = await fetch(segmentUrl(), { method: "POST", body: form, headers: { Accept: "application/json" } });
    } catch (err) {
      if (number !== state.request) return;
      finishWithError({ status: 0, code: "NETWORK_ERROR", message: `cannot reach the server (${err.message})` });
      return;
    }
    if (!response.ok) {
      const error = await apiError(response);
      if (number === state.request) finishWithError(error);
      return;
    }
    const text = await response.text();
    const roundTripMs = performance.now() - started;
    if (number !== state.request) return;
    const answer = JSON.parse(text);
    const labelMap = await decodeLabelPng(base64Bytes(answer.png));
    if (number !== state.request) return;
    show(file, name, answer, text, labelMap, new Map(model.classes.map((c) => [c.id, c])), roundTripMs);
  }

  function finishWithError(error) {
    el.result.removeAttribute("aria-busy");
    el.result.hidden = true;
    setStatus("");
    showError(error);
  }

  function show(file, name, answer, text, labelMap, classes, roundTripMs) {
    state.objectUrls.forEach((url) => URL.revokeObjectURL(url));
    const photoUrl = URL.createObjectURL(file);
    const pngUrl = URL.createObjectURL(new Blob([base64Bytes(answer.png)], { type: "image/png" }));
    const jsonUrl = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    state.objectUrls = [photoUrl, pngUrl, jsonUrl];
    state.labelMap = labelMap;
    state.classes = classes;
    state.probe = null;

    el.photo.src = photoUrl;
    el.overlayBase.src = photoUrl;
    drawLabels(labelMap, classes);
    fillLegend(answer.stats || [], classes);
    fillTimings(answer, roundTripMs);
    const stem = name.replace(/\.[^.]*$/, "") || "image";
    el.downloadPng.href = pngUrl;
    el.downloadPng.download = `${stem}-labels.png`;
    el.downloadJson.href = jsonUrl;
    el.downloadJson.download = `${stem}-segmentation.json`;
    el.probe.textContent = "Point at the segmentation to read its class.";
    el.marker.hidden = true;

    el.result.hidden = false;
    el.result.removeAttribute("aria-busy");
    const present = (answer.stats || []).length;
    setStatus(`${name}: ${present} ${present === 1 ? "class" : "classes"} found in ${answer.timing_ms.total.toFixed(0)} ms.`);
  }

  function colorOf(classes, id) {
    return classes.has(id) ? classes.get(id).color : UNKNOWN_COLOR;
  }

  function nameOf(classes, id) {
    return classes.has(id) ? classes.get(id).name : `class ${id}`;
  }

  function drawLabels(labelMap, classes) {
    const { width, height, ids } = labelMap;
    const canvas = el.labels;
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d");
    const image = context.createImageData(width, height);
    const lookup = new Map();
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      let rgb = lookup.get(id);
      if (!rgb) {
        rgb = colorOf(classes, id);
        lookup.set(id, rgb);
      }
      image.data[4 * i] = rgb[0];
      image.data[4 * i + 1] = rgb[1];
      image.data[4 * i + 2] = rgb[2];
      image.data[4 * i + 3] = 255;
    }
    context.putImageData(image, 0, 0);
    applyOpacity();
  }

  function fillLegend(stats, classes) {
    el.legend.textContent = "";
    [...stats]
      .sort((a, b) => b.fraction - a.fraction)
      .forEach((entry) => {
        const item = document.createElement("li");
        item.dataset.classId = String(entry.id);
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        const rgb = colorOf(classes, entry.id);
        swatch.style.backgroundColor = `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
        const label = document.createElement("span");
        label.className = "class-name";
        label.textContent = entry.name;
        const share = document.createElement("span");
        share.className = "share";
        share.textContent = formatShare(entry.fraction);
        share.title = `${entry.pixels} pixels`;
        item.append(swatch, label, share);
        el.legend.append(item);
      });
  }

  function fillTimings(answer, roundTripMs) {
    el.timings.textContent = "";
    const rows = Object.entries(answer.timing_ms || {});
    rows.push(["round trip (this browser)", roundTripMs]);
    rows.forEach(([stage, ms]) => {
      const row = el.timings.insertRow();
      const head = document.createElement("th");
      head.scope = "row";
      head.textContent = stage;
      row.append(head);
      row.insertCell().textContent = `${ms.toFixed(1)} ms`;
    });
    const image = answer.image || {};
    el.answerMeta.textContent =
      `${answer.model} version ${answer.model_version}, ${answer.backend} on ${answer.device}; ` +
      `${image.width} × ${image.height} ${image.format || ""} image, in a batch of ${answer.batch_size}.`;
  }

  // ---------------------------------------------------------------------------------------------------------
  // Reading the class under the pointer (mouse, touch or the arrow keys)

  function probeAt(x, y, fromKeyboard) {
    const map = state.labelMap;
    if (!map) return;
    x = Math.min(map.width - 1, Math.max(0, x));
    y = Math.min(map.height - 1, Math.max(0, y));
    state.probe = { x, y };
    const id = map.ids[y * map.width + x];
    el.probe.textContent = `${nameOf(state.classes, id)} (class ${id}) at x ${x}, y ${y}`;
    el.legend.querySelectorAll("li").forEach((item) => {
      item.classList.toggle("active", item.dataset.classId === String(id));
    });
    el.marker.hidden = !fromKeyboard;
    el.marker.style.left = `${((x + 0.5) / map.width) * 100}%`;
    el.marker.style.top = `${((y + 0.5) / map.height) * 100}%`;
  }

  function onPointer(event) {
    const map = state.labelMap;
    if (!map) return;
    const rect = el.labels.getBoundingClientRect();
    const x = Math.floor(((event.clientX - rect.left) / rect.width) * map.width);
    const y = Math.floor(((event.clientY - rect.top) / rect.height) * map.height);
    probeAt(x, y, false);
  }

  function onKey(event) {
    const map = state.labelMap;
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (!map || !(event.key in moves)) return;
    event.preventDefault();
    const [dx, dy] = moves[event.key];
    const scale = event.shiftKey ? 5 : 1;
    if (!state.probe) {
      probeAt(map.width >> 1, map.height >> 1, true); // the first key press starts in the middle
      return;
    }
    const stepX = Math.max(1, Math.round(map.width / KEY_STEPS)) * scale;
    const stepY = Math.max(1, Math.round(map.height / KEY_STEPS)) * scale;
    probeAt(state.probe.x + dx * stepX, state.probe.y + dy * stepY, true);
  }

  // ---------------------------------------------------------------------------------------------------------
  // Inputs

  function applyOpacity() {
    el.labels.style.opacity = String(el.opacity.value / 100);
    el.opacityValue.textContent = `${el.opacity.value} %`;
  }

  async function segmentSample(name) {
    clearError();
    let response;
    try {
      response = await fetch(`${SAMPLES_URL}${name}.jpg`);
    } catch (err) {
      showError({ status: 0, code: "NETWORK_ERROR", message: `cannot load the sample (${err.message})` });
      return;
    }
    if (!response.ok) {
      showError(await apiError(response));
      return;
    }
    await segment(await response.blob(), `${name}.jpg`);
  }

  function formatBytes(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  function formatShare(fraction) {
    const percent = fraction * 100;
    return percent > 0 && percent < 0.1 ? "< 0.1 %" : `${percent.toFixed(1)} %`;
  }

  // A failure of the page itself (not of the API): shown on the page, and logged, so it is never silent.
  function report(promise) {
    promise.catch((err) => {
      finishWithError({ status: 0, code: "PAGE_ERROR", message: `the page could not show the answer: ${err.message}` });
      console.error(err);
    });
  }

  function bind() {
    el.fileInput.addEventListener("change", () => {
      const file = el.fileInput.files[0];
      if (file) report(segment(file, file.name));
      el.fileInput.value = ""; // picking the same file again segments it again
    });
    el.samples.forEach((button) => button.addEventListener("click", () => report(segmentSample(button.dataset.sample))));
    el.modelSelect.addEventListener("change", fillVersionChoices);
    el.versionSelect.addEventListener("change", fillBucketChoices);
    el.opacity.addEventListener("input", applyOpacity);
    el.labels.addEventListener("pointermove", onPointer);
    el.labels.addEventListener("pointerdown", onPointer);
    el.labels.addEventListener("keydown", onKey);

    // Drops anywhere on the page (a missed drop would otherwise make the browser open the file).
    document.addEventListener("dragover", (event) => {
      event.preventDefault();
      el.dropZone.classList.add("dragging");
    });
    document.addEventListener("dragleave", (event) => {
      if (!event.relatedTarget) el.dropZone.classList.remove("dragging");
    });
    document.addEventListener("drop", (event) => {
      event.preventDefault();
      el.dropZone.classList.remove("dragging");
      const file = event.dataTransfer && event.dataTransfer.files[0];
      if (file && !el.fileInput.disabled) report(segment(file, file.name));
    });
  }

  setControlsEnabled(false);
  applyOpacity();
  bind();
  report(loadModels());
})();
