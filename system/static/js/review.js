// The record page's review: mark each of the model's boxes right or wrong, change its
// label, draw the boxes the model missed (mouse, pen or finger: pointer events), then
// save with PUT /api/detections/{id}/review. The model's own boxes are never changed:
// the review is stored beside them.
//
// Keyboard: every box (on the image and in the list) takes focus; while a box or its
// row has focus, the keys 1-9 give it the n-th label, Delete or Backspace marks it
// wrong (a drawn box: removes it), Enter or R marks it right; Escape ends drawing.

import { labelStyle, readPalette } from "./boxes.js";

const MIN_BOX_PX = 3; // in the image's pixels: a smaller drag is a click, not a box

const root = document.getElementById("review");
if (root) start(root);

function start(root) {
  const data = JSON.parse(root.dataset.record);
  const palette = readPalette(root);
  const stage = document.getElementById("review-stage");
  const overlay = document.getElementById("review-boxes");
  const list = document.getElementById("review-list");
  const drawButton = document.getElementById("review-draw");
  const saveButton = document.getElementById("review-save");
  const resetButton = document.getElementById("review-reset");
  const status = document.getElementById("review-status");
  const stateLine = document.getElementById("review-state");
  let items = fromRecord(data);
  let drawing = false;
  let lastLabel = data.labels[0];

  const colour = (label) => labelStyle(palette, label, Math.max(data.labels.indexOf(label), 0));
  const percent = (value, total) => `${Math.min(100, Math.max(0, (value / total) * 100)).toFixed(3)}%`;

  function say(text, isError = false) {
    status.textContent = text;
    status.classList.toggle("is-error", isError);
  }

  function changed() {
    render();
    say("Unsaved changes.");
  }

  function name(item) {
    return item.kind === "model" ? `Box ${item.index + 1}` : `Added box ${item.number}`;
  }

  function render() {
    const focused = document.activeElement?.closest("[data-item]")?.dataset.item;
    const focusedPart = document.activeElement?.dataset.part;
    overlay.replaceChildren();
    list.replaceChildren();
    items.forEach((item, i) => {
      overlay.append(boxElement(item, i));
      list.append(rowElement(item, i));
    });
    if (focused !== undefined) {
      const again = document.querySelector(`[data-item="${focused}"] [data-part="${focusedPart}"]`)
        || document.querySelector(`#review-list [data-item="${focused}"]`);
      again?.focus();
    }
  }

  function boxElement(item, i) {
    const { x1, y1, x2, y2 } = item.box;
    const box = document.createElement("div");
    box.className = `review-box review-box--${item.kind}${item.wrong ? " is-wrong" : ""}`;
    box.dataset.item = String(i);
    box.dataset.part = "box";
    box.tabIndex = 0;
    box.setAttribute("role", "button");
    box.setAttribute("aria-label", `${name(item)}: ${item.label}${item.wrong ? ", wrong" : ""}`);
    const style = colour(item.label);
    box.style.setProperty("--c", style.color);
    box.style.setProperty("--c-text", style.text);
    box.style.left = percent(x1, data.width);
    box.style.top = percent(y1, data.height);
    box.style.width = percent(x2 - x1, data.width);
    box.style.height = percent(y2 - y1, data.height);
    const tag = document.createElement("span");
    tag.className = "review-box__label";
    tag.textContent = item.wrong ? `✗ ${item.label}` : item.label;
    box.append(tag);
    box.addEventListener("click", () => {
      if (!drawing) list.querySelector(`[data-item="${i}"] select`)?.focus();
    });
    return box;
  }

  function rowElement(item, i) {
    const row = document.createElement("li");
    row.className = `review-item${item.wrong ? " is-wrong" : ""}`;
    row.dataset.item = String(i);
    const style = colour(item.label);
    row.style.setProperty("--c", style.color);
    const title = document.createElement("span");
    title.className = "review-item__name";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.setAttribute("aria-hidden", "true");
    title.append(swatch, item.kind === "model"
      ? `${name(item)} · model: ${item.modelLabel} ${Math.round(item.confidence * 100)}%`
      : name(item));
    const select = document.createElement("select");
    select.dataset.part = "label";
    select.setAttribute("aria-label", `Label of ${name(item).toLowerCase()}`);
    for (const label of data.labels) {
      const option = new Option(label, label, false, label === item.label);
      select.append(option);
    }
    select.addEventListener("change", () => {
      item.label = select.value;
      item.wrong = false;
      lastLabel = item.label;
      changed();
    });
    row.append(title, select);
    if (item.kind === "model") {
      const group = document.createElement("div");
      group.className = "review-item__verdict";
      group.setAttribute("role", "group");
      group.setAttribute("aria-label", `Is ${name(item).toLowerCase()} right?`);
      for (const [value, text] of [["right", "Right"], ["wrong", "Wrong"]]) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "button button--ghost button--small";
        button.dataset.part = value;
        button.textContent = text;
        button.setAttribute("aria-pressed", String(item.wrong === (value === "wrong")));
        button.addEventListener("click", () => {
          item.wrong = value === "wrong";
          changed();
        });
        group.append(button);
      }
      row.append(group);
    } else {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "button button--ghost button--small";
      remove.dataset.part = "remove";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${name(item).toLowerCase()}`);
      remove.addEventListener("click", () => {
        items.splice(i, 1);
        changed();
        list.querySelector("select")?.focus();
      });
      row.append(remove);
    }
    return row;
  }

  // Keys on a focused box or row (digits give labels; see the top of this file).
  root.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && drawing) {
      setDrawing(false);
      return;
    }
    const holder = event.target.closest?.("[data-item]");
    if (!holder || event.altKey || event.ctrlKey || event.metaKey) return;
    const item = items[Number(holder.dataset.item)];
    if (!item) return;
    const digit = Number(event.key);
    if (Number.isInteger(digit) && digit >= 1 && digit <= Math.min(9, data.labels.length)) {
      event.preventDefault();
      item.label = data.labels[digit - 1];
      item.wrong = false;
      lastLabel = item.label;
      changed();
    } else if (event.key === "Delete" || event.key === "Backspace") {
      if (event.target.tagName === "SELECT" || item.kind === "model") {
        event.preventDefault();
      }
      if (item.kind === "model") {
        item.wrong = true;
        changed();
      } else {
        event.preventDefault();
        items.splice(items.indexOf(item), 1);
        changed();
      }
    } else if ((event.key === "r" || event.key === "R" || event.key === "Enter")
               && event.target.tagName !== "BUTTON") {
      if (item.kind === "model") {
        event.preventDefault();
        item.wrong = false;
        changed();
      }
    }
  });

  // Drawing: pointer events cover mouse, pen and touch alike.
  function setDrawing(on) {
    drawing = on;
    drawButton.setAttribute("aria-pressed", String(on));
    stage.classList.toggle("is-drawing", on);
    say(on ? "Drag over the image to draw a box; Escape or the button again to stop." : "");
  }
  drawButton.addEventListener("click", () => setDrawing(!drawing));

  let drag = null;
  const toImage = (event) => {
    const rect = overlay.getBoundingClientRect();
    const x = ((event.clientX - rect.left) / rect.width) * data.width;
    const y = ((event.clientY - rect.top) / rect.height) * data.height;
    return [Math.min(Math.max(x, 0), data.width), Math.min(Math.max(y, 0), data.height)];
  };
  overlay.addEventListener("pointerdown", (event) => {
    if (!drawing || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    overlay.setPointerCapture(event.pointerId);
    const [x, y] = toImage(event);
    const band = document.createElement("div");
    band.className = "review-band";
    overlay.append(band);
    drag = { id: event.pointerId, x, y, band };
  });
  overlay.addEventListener("pointermove", (event) => {
    if (!drag || event.pointerId !== drag.id) return;
    const [x, y] = toImage(event);
    const box = corners(drag.x, drag.y, x, y);
    drag.band.style.left = percent(box.x1, data.width);
    drag.band.style.top = percent(box.y1, data.height);
    drag.band.style.width = percent(box.x2 - box.x1, data.width);
    drag.band.style.height = percent(box.y2 - box.y1, data.height);
  });
  const finish = (event) => {
    if (!drag || event.pointerId !== drag.id) return;
    const [x, y] = toImage(event);
    const box = corners(drag.x, drag.y, x, y);
    drag.band.remove();
    drag = null;
    if (event.type === "pointercancel" || box.x2 - box.x1 < MIN_BOX_PX
        || box.y2 - box.y1 < MIN_BOX_PX) return;
    const number = items.filter((it) => it.kind === "drawn").length + 1;
    items.push({ kind: "drawn", number, label: lastLabel, box, wrong: false });
    changed();
    list.querySelector(`[data-item="${items.length - 1}"] select`)?.focus();
  };
  overlay.addEventListener("pointerup", finish);
  overlay.addEventListener("pointercancel", finish);

  function corners(ax, ay, bx, by) {
    const round = (v) => Math.round(v * 10) / 10;
    return { x1: round(Math.min(ax, bx)), y1: round(Math.min(ay, by)),
             x2: round(Math.max(ax, bx)), y2: round(Math.max(ay, by)) };
  }

  // Saving and withdrawing.
  async function send(method, body) {
    const response = await fetch(`/api/detections/${data.id}/review`, {
      method,
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
      credentials: "same-origin",
    });
    if (!response.ok) {
      let message = `${response.status}`;
      try {
        const error = (await response.json()).error;
        message = `${response.status} ${error.code}: ${error.message}`;
      } catch {
        // not JSON: the status says enough
      }
      throw new Error(message);
    }
    return response.status === 204 ? null : response.json();
  }

  saveButton.addEventListener("click", async () => {
    const boxes = items.filter((item) => !item.wrong).map((item) => {
      const out = { label: item.label, box: item.box };
      if (item.kind === "model") out.detection = item.index;
      return out;
    });
    saveButton.disabled = true;
    try {
      const saved = await send("PUT", { boxes });
      data.review = saved;
      stateLine.textContent = reviewedText(saved);
      resetButton.hidden = false;
      say(`Review saved: ${boxes.length} box${boxes.length === 1 ? "" : "es"}.`);
    } catch (error) {
      say(`Not saved: ${error.message}`, true);
    } finally {
      saveButton.disabled = false;
    }
  });

  resetButton.addEventListener("click", async () => {
    try {
      await send("DELETE");
      data.review = null;
      items = fromRecord(data);
      render();
      stateLine.textContent = "Not reviewed yet: the boxes are the model's.";
      resetButton.hidden = true;
      say("Review removed: the model's boxes again.");
    } catch (error) {
      say(`Not removed: ${error.message}`, true);
    }
  });

  render();
}

function reviewedText(review) {
  const when = review.reviewed_at.slice(0, 19).replace("T", " ");
  return `Reviewed${review.reviewer ? ` by ${review.reviewer}` : ""} ${when} UTC; `
    + "the model's own boxes are kept beside it.";
}

// The editable state: one item per model box (right unless the review left it out),
// then the boxes the review added.
function fromRecord(data) {
  const items = data.detections.map((det, index) => ({
    kind: "model", index, label: det.label, modelLabel: det.label,
    confidence: det.confidence, box: { ...det.box }, wrong: false,
  }));
  if (!data.review) return items;
  for (const item of items) item.wrong = true;
  let number = 0;
  for (const box of data.review.boxes) {
    if (Number.isInteger(box.detection) && items[box.detection]) {
      items[box.detection].wrong = false;
      items[box.detection].label = box.label;
    } else {
      number += 1;
      items.push({ kind: "drawn", number, label: box.label, box: { ...box.box }, wrong: false });
    }
  }
  return items;
}
