// Upload page: send each chosen or dropped image to POST /detect and draw its boxes.
// Everything from the server or the user is inserted with textContent, never as HTML.
// Boxes and labels: boxes.js (the rules and palette of model/draw.py). A result opens
// large in a dialog (Esc or the close button closes it).

import { drawBoxes, labelStyle, layoutLabels, readPalette } from "./boxes.js";

const MAX_PARALLEL = 2;

const form = document.getElementById("upload-form");
const input = document.getElementById("image-input");
const dropzone = document.getElementById("dropzone");
const confInput = document.getElementById("conf-input");
const modelSelect = document.getElementById("model-select");  // only with several models
const statusLine = document.getElementById("upload-status");
const results = document.getElementById("results");
const template = document.getElementById("result-template");
const viewer = document.getElementById("viewer");
const palette = readPalette(results);

let pending = 0;
let queue = [];
let running = 0;

function setColor(element, label, classId) {
  const { color, text } = labelStyle(palette, label, classId);
  element.style.setProperty("--c", color);
  element.style.setProperty("--c-text", text);
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

// Labels are placed in the pixels the image is shown at: again whenever that changes.
const relayout = new ResizeObserver((entries) => {
  for (const entry of entries) layoutLabels(entry.target, palette);
});

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
    setColor(item, entry.label, entry.classId);
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
  card.record = record;
  const stage = card.querySelector(".stage");
  stage.style.aspectRatio = `${record.width} / ${record.height}`;
  stage.style.setProperty("--ar", String(record.width / record.height));
  const overlay = card.querySelector(".stage__boxes");
  if (card.dataset.preview === "server") {
    showServerPreview(card, record, overlay);
  } else {
    drawBoxes(overlay, record, palette);
    relayout.observe(overlay);
  }
  const open = card.querySelector(".stage__open");
  open.disabled = false;
  open.setAttribute("aria-label", `Open ${record.filename || "the image"} large`);
  listDetections(card.querySelector(".det-list"), record);
  const recordUrl = `/detections/${encodeURIComponent(record.id)}`;
  const links = card.querySelector(".result__links");
  links.querySelector(".result__record").href = recordUrl;
  links.querySelector(".result__json").href = `/api/detections/${encodeURIComponent(record.id)}`;
  links.hidden = false;
}

// An image this browser cannot show (TIFF, HEIC): the server's annotated JPEG of it, with
// the same boxes drawn the same way; without stored originals, the boxes on the grey.
function showServerPreview(card, record, overlay) {
  relayout.unobserve(overlay);
  overlay.replaceChildren();
  const img = card.querySelector(".stage__img");
  const stage = card.querySelector(".stage");
  img.addEventListener("load", () => stage.classList.remove("stage--broken"), { once: true });
  img.addEventListener("error", () => {
    stage.classList.remove("stage--broken");
    stage.classList.add("stage--blank");
    drawBoxes(overlay, record, palette);
    relayout.observe(overlay);
  }, { once: true });
  img.src = `/detections/${encodeURIComponent(record.id)}/image?annotated=1`;
}

// The large view: a copy of the card's stage in a modal dialog; its labels are laid out
// again for the larger size.
function openViewer(card) {
  const stage = card.querySelector(".stage").cloneNode(true);
  stage.classList.add("stage--large");
  const open = stage.querySelector(".stage__open");
  open.replaceWith(...open.childNodes);
  viewer.querySelector(".viewer__title").textContent = card.querySelector(".result__name").textContent;
  viewer.querySelector(".viewer__body").replaceChildren(stage);
  viewer.returnFocus = card.querySelector(".stage__open");
  viewer.showModal();
  const overlay = stage.querySelector(".stage__boxes");
  if (overlay.dataset.width) relayout.observe(overlay);
}

function closeViewer() {
  const overlay = viewer.querySelector(".viewer__body .stage__boxes");
  if (overlay) relayout.unobserve(overlay);
  viewer.querySelector(".viewer__body").replaceChildren();
}

viewer.addEventListener("close", () => {
  closeViewer();
  if (viewer.returnFocus) viewer.returnFocus.focus();
});
viewer.querySelector(".viewer__close").addEventListener("click", () => viewer.close());
viewer.addEventListener("click", (event) => {
  if (event.target === viewer) viewer.close();  // a click on the backdrop
});

results.addEventListener("click", (event) => {
  const open = event.target.closest(".stage__open");
  if (open && !open.disabled) openViewer(open.closest(".result"));
});

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
      // Not an image we read: the browser's preview of it would only mislead.
      if (response.status === 415) card.querySelector(".result__figure").hidden = true;
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
    // The browser's own decoding when it can (transparency shows on the page's matte,
    // the grey the model saw it on); otherwise the server's rendering, once detected.
    const img = card.querySelector(".stage__img");
    // Kept while the page lives: the large view shows the same URL.
    const url = URL.createObjectURL(file);
    img.addEventListener("error", () => {
      URL.revokeObjectURL(url);
      card.querySelector(".stage").classList.add("stage--broken");
      card.dataset.preview = "server";
      if (card.record) showServerPreview(card, card.record, card.querySelector(".stage__boxes"));
    }, { once: true });
    img.src = url;
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
