// Stored images can be missing (storage switched off): show a placeholder, not a broken icon.

function markMissing(img) {
  img.classList.add("is-missing");
  img.removeAttribute("src");
}

for (const img of document.querySelectorAll("img[data-stored-image]")) {
  if (img.complete && img.naturalWidth === 0 && img.getAttribute("src")) {
    markMissing(img);
  } else {
    img.addEventListener("error", () => markMissing(img), { once: true });
  }
}
