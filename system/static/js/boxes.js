// Boxes and labels over an image, drawn the way model/draw.py draws the annotated JPEG:
// the same palette (read from the page: model.draw.palette(), rendered into
// data-palette) and the same label placement, in the pixels the image is shown at.
// Labels stay inside the image and never cover each other: above the box, else below
// it, else inside its top, else inside its bottom (aligned left, else right); then
// stacked above or below, or set beside, the labels in the way, nearest first. A label
// with no place is left off; its box keeps a tooltip.

const DENSE_BOXES = 25;

export function readPalette(element) {
  return JSON.parse(element.dataset.palette);
}

// The colour and mark of a class: a traffic light by its name, else by its id.
export function labelStyle(palette, label, classId) {
  const suffix = palette.arrowSuffix;
  const base = label.endsWith(suffix) ? label.slice(0, -suffix.length) : null;
  const arrow = base !== null && Object.hasOwn(palette.lights, base);
  const key = arrow ? base : label;
  const id = Number.isInteger(classId) && classId >= 0 ? classId : 0;
  const color = Object.hasOwn(palette.lights, key)
    ? palette.lights[key] : palette.categorical[id % palette.categorical.length];
  return { color, text: palette.text[color], arrow };
}

export function labelFontPx(palette, width, height) {
  const { scale, min, max } = palette.font;
  const size = Math.round(scale * Math.sqrt(Math.max(width, 0) * Math.max(height, 0)));
  return Math.min(Math.max(size, min), max);
}

function overlaps(a, b) {
  return a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
}

function placeOne(box, w, h, width, height, placed, maxTries) {
  if (w > width || h > height) return null;
  const [x1, y1, x2, y2] = box;
  const clampX = (x) => Math.min(Math.max(x, 0), width - w);
  const anchorX = clampX(x1);
  const anchorY = y1 - h;
  const queue = [];  // kept ordered by (rank, distance, sequence), as model/draw.py's heap
  const seen = new Set();
  let sequence = 0;
  const push = (rank, leftRaw, top) => {
    const left = clampX(leftRaw);
    const key = `${left},${top}`;
    if (top < 0 || top + h > height || seen.has(key)) return;
    seen.add(key);
    sequence += 1;
    const item = { rank, distance: Math.abs(left - anchorX) + Math.abs(top - anchorY), sequence, left, top };
    let i = queue.length;
    while (i > 0 && before(item, queue[i - 1])) i -= 1;
    queue.splice(i, 0, item);
  };
  let order = 0;
  for (const top of [y1 - h, y2, y1, y2 - h]) {
    for (const left of [x1, x2 - w]) {
      push(order, left, top);
      order += 1;
    }
  }
  let tries = 0;
  while (queue.length > 0 && tries < maxTries) {
    const { left, top } = queue.shift();
    tries += 1;
    const spot = { left, top, right: left + w, bottom: top + h };
    const blockers = placed.filter((p) => overlaps(spot, p));
    if (blockers.length === 0) return spot;
    for (const block of blockers) {
      push(order, left, block.bottom);
      push(order, left, block.top - h);
      push(order, block.right, top);
      push(order, block.left - w, top);
    }
  }
  return null;
}

function before(a, b) {
  if (a.rank !== b.rank) return a.rank < b.rank;
  if (a.distance !== b.distance) return a.distance < b.distance;
  return a.sequence < b.sequence;
}

// boxes: [x1, y1, x2, y2]; sizes: [w, h]; returns a {left, top, right, bottom} or null each.
export function placeLabels(boxes, sizes, width, height, maxTries = 64) {
  const placed = [];
  return boxes.map((box, i) => {
    const spot = placeOne(box, sizes[i][0], sizes[i][1], width, height, placed, maxTries);
    if (spot) placed.push(spot);
    return spot;
  });
}

function percent(value, total) {
  return `${Math.min(100, Math.max(0, (value / total) * 100)).toFixed(3)}%`;
}

export function labelText(det, style) {
  return `${style.arrow ? "← " : ""}${det.label} ${Math.round(det.confidence * 100)}%`;
}

// Boxes at percentages of the record's size (they follow the image); labels placed in
// the pixels the overlay has now: call layoutLabels again when its size changes.
export function drawBoxes(container, record, palette) {
  container.replaceChildren();
  // Many boxes: thinner lines, so that the picture still shows between them.
  container.classList.toggle("stage__boxes--dense", record.detections.length > DENSE_BOXES);
  const tags = [];
  container.dataset.width = String(record.width);
  container.dataset.height = String(record.height);
  for (const det of record.detections) {
    const { x1, y1, x2, y2 } = det.box;
    const style = labelStyle(palette, det.label, det.class_id);
    const box = document.createElement("div");
    box.className = style.arrow ? "box box--arrow" : "box";
    box.style.setProperty("--c", style.color);
    box.style.left = percent(x1, record.width);
    box.style.top = percent(y1, record.height);
    box.style.width = percent(x2 - x1, record.width);
    box.style.height = percent(y2 - y1, record.height);
    box.dataset.box = JSON.stringify([x1, y1, x2, y2]);
    box.title = `${det.label} ${(det.confidence * 100).toFixed(1)}%`;
    const tag = document.createElement("span");
    tag.className = "box__label";
    tag.style.setProperty("--c", style.color);
    tag.style.setProperty("--c-text", style.text);
    tag.textContent = labelText(det, style);
    container.append(box);
    tags.push(tag);
  }
  container.append(...tags);  // over every box, as model/draw.py draws them last
  layoutLabels(container, palette);
}

export function layoutLabels(container, palette) {
  const width = container.clientWidth;
  const height = container.clientHeight;
  const tags = [...container.querySelectorAll(".box__label")];
  if (width === 0 || height === 0 || tags.length === 0) return;
  const sx = width / Number(container.dataset.width);
  const sy = height / Number(container.dataset.height);
  const font = labelFontPx(palette, width, height);
  const labelHeight = Math.round(font * palette.label.height);
  const pad = Math.round(font * palette.label.pad);
  container.style.setProperty("--label-font", `${font}px`);
  container.style.setProperty("--label-height", `${labelHeight}px`);
  container.style.setProperty("--label-pad", `${pad}px`);
  for (const tag of tags) tag.hidden = false;
  const sizes = tags.map((tag) => [Math.ceil(tag.getBoundingClientRect().width), labelHeight]);
  const boxes = [...container.querySelectorAll(".box")].map((box) => {
    const [x1, y1, x2, y2] = JSON.parse(box.dataset.box);
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy];
  });
  const spots = placeLabels(boxes, sizes, width, height, palette.label.maxTries);
  spots.forEach((spot, i) => {
    const tag = tags[i];
    tag.hidden = spot === null;
    if (spot) {
      tag.style.left = `${spot.left}px`;
      tag.style.top = `${spot.top}px`;
    }
  });
}
