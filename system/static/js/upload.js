// Upload page: send each chosen or dropped image to POST /detect and draw its boxes.
// Everything from the server or the user is inserted with textContent, never as HTML.

const MAX_PARALLEL = 2;
const DENSE_BOXES = 25;

const form = document.getElementById("upload-form");
const input = document.getElementById("image-input");
const dropzone = document.getElementById("dropzone");
const confInput = document.getElementById("conf-input");
const modelSelect = document.getElementById("model-select");  // only with several models
const statusLine = document.getElementById("upload-status");
const results = document.getElementById("results");
const template = document.getElementById("result-template");

let pending = 0;
let queue = [];
let running = 0;

// The colour utils/draw.py gives a class on the annotated images: hue stepped by the
// golden ratio, HSV (h, 0.85, 0.95); black text on light colours, white on dark ones.
function classColor(classId) {
  const id = Number.isInteger(classId) && classId >= 0 ? classId : 0;
  const h = (id * 0.618033988749895) % 1;
  const s = 0.85;
  const v = 0.95;
  const i = Math.floor(h * 6);
  const f = h * 6 - i;
  const p = v * (1 - s);
  const q = v * (1 - s * f);
  const t = v * (1 - s * (1 - f));
  const [r, g, b] = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][i % 6]
    .map((x) => Math.round(x * 255));
  const hex = `#${[r, g, b].map((x) => x.toString(16).padStart(2, "0")).join("")}`;
  const text = 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#000" : "#fff";
  return { hex, text };
}

function setColor(element, classId) {
  const { hex, text } = classColor(classId);
  element.style.setProperty("--c", hex);
  element.style.setProperty("--c-text", text);
}

function percent(value, total) {
  return `${Math.min(100, Math.max(0, (value / total) * 100)).toFixed(3)}%`;
}

function formatConfidence(confidence) {
  return `${(confidence * 100).toFixed(1)}%`;
}

function updateStatus() {
  if (pending > 0) {
    statusLine.textContent = `Detecting… ${pending} image${pending === 1 ? "" : "s"} left`;
  } else {
    statusLine.textContent = results.children.length ? "All images processed." : "";
  }
}

function createCard(file, batch) {
  const card = template.content.firstElementChild.cloneNode(true);
  card.querySelector(".result__name").textContent = file.name || "image";
  card.querySelector(".result__state").textContent = "Waiting";
  card.querySelector(".stage__img").alt = `Preview of ${file.name || "image"}`;
  card.classList.add("is-pending");
  batch.append(card);
  return card;
}

// Positions are percentages of the record's own width and height, so boxes follow the
// image at whatever size it is displayed.
function drawBoxes(container, record) {
  container.replaceChildren();
  // With many boxes the tags would cover the picture: they then show on hover only.
  container.classList.toggle("stage__boxes--dense", record.detections.length > DENSE_BOXES);
  for (const det of record.detections) {
    const { x1, y1, x2, y2 } = det.box;
    const box = document.createElement("div");
    box.className = "box";
    setColor(box, det.class_id);
    box.style.left = percent(x1, record.width);
    box.style.top = percent(y1, record.height);
    box.style.width = percent(x2 - x1, record.width);
    box.style.height = percent(y2 - y1, record.height);
    if (y1 / record.height < 0.06) box.classList.add("box--label-inside");
    const tag = document.createElement("span");
    tag.className = "box__label";
    tag.textContent = `${det.label} ${formatConfidence(det.confidence)}`;
    box.title = tag.textContent;
    box.append(tag);
    container.append(box);
  }
}

// One chip per label: how many boxes and the best confidence.
function summarize(detections) {
  const byLabel = new Map();
  for (const det of detections) {
    const entry = byLabel.get(det.label);
    if (entry) {
      entry.count += 1;
      entry.best = Math.max(entry.best, det.confidence);
    } else {
      byLabel.set(det.label, { label: det.label, classId: det.class_id, count: 1, best: det.confidence });
    }
  }
  return [...byLabel.values()].sort((a, b) => b.count - a.count || b.best - a.best);
}

function listDetections(list, record) {
  list.replaceChildren();
  for (const entry of summarize(record.detections)) {
    const item = document.createElement("li");
    item.className = "det";
    setColor(item, entry.classId);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.setAttribute("aria-hidden", "true");
    const label = document.createElement("span");
    label.className = "det__label";
    label.textContent = entry.count > 1 ? `${entry.label} ×${entry.count}` : entry.label;
    const conf = document.createElement("span");
    conf.className = "det__conf";
    conf.textContent = entry.count > 1 ? `best ${formatConfidence(entry.best)}` : formatConfidence(entry.best);
    item.append(swatch, label, conf);
    list.append(item);
  }
  list.hidden = record.detections.length === 0;
}

function showRecord(card, record) {
  const count = record.detections.length;
  card.classList.remove("is-pending");
  card.classList.add("is-done");
  card.dataset.recordId = record.id;
  card.dataset.detections = String(count);
  card.querySelector(".result__state").textContent =
    count === 1 ? "1 object" : `${count} objects`;
  card.querySelector(".result__summary").textContent =
    `${record.width}×${record.height} px · ${record.model} · ${Math.round(record.inference_ms)} ms` +
    (count === 0 ? " · nothing detected" : "");
  drawBoxes(card.querySelector(".stage__boxes"), record);
  listDetections(card.querySelector(".det-list"), record);
  const recordUrl = `/detections/${encodeURIComponent(record.id)}`;
  const links = card.querySelector(".result__links");
  links.querySelector(".result__record").href = recordUrl;
  links.querySelector(".result__json").href = `/api/detections/${encodeURIComponent(record.id)}`;
  links.hidden = false;
}

function showError(card, message, code) {
  card.classList.remove("is-pending");
  card.classList.add("is-error");
  card.querySelector(".result__state").textContent = "Failed";
  const box = card.querySelector(".result__error");
  const title = document.createElement("strong");
  title.textContent = "Not processed. ";
  const parts = [title, document.createTextNode(message)];
  if (code) {
    const detail = document.createElement("span");
    detail.className = "alert__code";
    detail.textContent = ` (${code})`;
    parts.push(detail);
  }
  box.replaceChildren(...parts);
  box.hidden = false;
}

async function readError(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) {
      const code = body.error.code ? `${response.status} ${body.error.code}` : String(response.status);
      return { message: String(body.error.message), code };
    }
  } catch {
    // Not JSON (a proxy's error page, for example): fall through to the status line.
  }
  return { message: response.statusText || "The server could not process this image.", code: String(response.status) };
}

function detectUrl() {
  const query = new URLSearchParams();
  const conf = confInput.value.trim();
  if (conf !== "") query.set("conf", conf);
  if (modelSelect && modelSelect.value) query.set("model", modelSelect.value);
  const text = query.toString();
  return text === "" ? "/detect" : `/detect?${text}`;
}

async function detect(file, card) {
  card.querySelector(".result__state").textContent = "Detecting…";
  const body = new FormData();
  body.append("image", file, file.name);
  try {
    const response = await fetch(detectUrl(), { method: "POST", body, headers: { Accept: "application/json" } });
    if (!response.ok) {
      const { message, code } = await readError(response);
      showError(card, message, code);
      return;
    }
    showRecord(card, await response.json());
  } catch (err) {
    showError(card, `Network error: ${err.message}`, "");
  } finally {
    card.removeAttribute("aria-busy");
  }
}

function pump() {
  while (running < MAX_PARALLEL && queue.length > 0) {
    const { file, card } = queue.shift();
    running += 1;
    detect(file, card).finally(() => {
      running -= 1;
      pending -= 1;
      updateStatus();
      pump();
    });
  }
}

function addFiles(fileList) {
  const files = Array.from(fileList);
  if (files.length === 0) return;
  // The newest batch goes on top, its images in the order they were chosen.
  const batch = document.createDocumentFragment();
  for (const file of files) {
    const card = createCard(file, batch);
    if (file.type.startsWith("image/")) {
      const img = card.querySelector(".stage__img");
      const url = URL.createObjectURL(file);
      img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
      img.addEventListener("error", () => {
        URL.revokeObjectURL(url);
        card.querySelector(".stage").classList.add("stage--broken");
      }, { once: true });
      img.src = url;
    } else {
      card.querySelector(".stage").classList.add("stage--broken");
    }
    queue.push({ file, card });
    pending += 1;
  }
  results.prepend(batch);
  updateStatus();
  pump();
}

input.addEventListener("change", () => {
  addFiles(input.files);
  input.value = "";
});

// Example photos (system/static/examples): fetched and sent like a chosen file.
for (const button of document.querySelectorAll("[data-example]")) {
  button.addEventListener("click", async () => {
    const url = button.dataset.example;
    const response = await fetch(url);
    if (!response.ok) return;
    const blob = await response.blob();
    addFiles([new File([blob], url.split("/").pop(), { type: blob.type || "image/jpeg" })]);
  });
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  addFiles(input.files);
});

for (const name of ["dragenter", "dragover"]) {
  dropzone.addEventListener(name, (event) => {
    event.preventDefault();
    dropzone.classList.add("is-dragging");
  });
}
for (const name of ["dragleave", "dragend"]) {
  dropzone.addEventListener(name, () => dropzone.classList.remove("is-dragging"));
}
dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropzone.classList.remove("is-dragging");
  if (event.dataTransfer) addFiles(event.dataTransfer.files);
});

// A file dropped beside the zone would otherwise make the browser navigate away.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());
