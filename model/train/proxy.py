"""The held-out small-light proxy: held-out real photos shrunk into larger real scenes.

No shippable set of real street photos with small labelled lights exists, so this set is
*made*: each scene is a canvas of a phone / dashcam size (1280x960, 1920x1080 or
4032x3024) covered by one held-out CINTA photo (scaled up; its lights labelled), with 6-14
other held-out photos pasted on it, each shrunk so that its largest light has a long side
of 6-40 px (log-uniform) *at the network's view of the whole canvas* (``view``, the
service's 512), at free places. Every photo comes from the held-out split (by source
photo, :mod:`model.train.real`), so no light or surrounding of the proxy was trained on.

It is a proxy: the small lights are real and keep their real surroundings, but the scene
around a pasted photo is another photo (a visible rectangle), and the backgrounds are
416-px photos magnified 3-10x. A scene is a pure function of (seed, canvas, index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.train.real import RealImage
from model.train.small import fill_canvas, shrink

CANVASES: tuple[tuple[int, int], ...] = ((1280, 960), (1920, 1080), (4032, 3024))
LIGHT_VIEW_PX = (6.0, 40.0)


@dataclass(frozen=True)
class ProxyScene:
    """One proxy image (BGR) with its labels (classes ours, boxes x1y1x2y2 in pixels)."""

    image: np.ndarray
    classes: np.ndarray
    boxes: np.ndarray


def proxy_scene(photos: list[RealImage], seed: int, canvas: tuple[int, int], index: int,
                view: int = 512) -> ProxyScene:
    """Scene ``index`` of the proxy set ``seed`` for a ``canvas`` = (width, height)."""
    width, height = canvas
    rng = np.random.default_rng([seed, width, height, index])
    r = view / max(width, height)
    img, classes, boxes = fill_canvas(rng, photos[int(rng.integers(len(photos)))].load(),
                                      width, height, (1.0, 1.3))
    img = img.copy()
    taken = [b for b in boxes]  # keep pasted photos off the background's lights
    out_cls, out_boxes = [classes], [boxes]
    for _ in range(int(rng.integers(6, 15))):
        photo = photos[int(rng.integers(len(photos)))]
        if len(photo.classes) == 0:
            continue
        pimg, pcls, pbox = photo.load()
        rel = float(np.max(np.maximum(pbox[:, 2] - pbox[:, 0], pbox[:, 3] - pbox[:, 1]))
                    / max(pimg.shape[:2]))
        target = float(np.exp(rng.uniform(*np.log(LIGHT_VIEW_PX)))) / r
        long_px = min(target / max(rel, 1e-3), 0.45 * min(width, height))
        small, scls, sbox = shrink(rng, (pimg, pcls, pbox), long_px)
        sh, sw = small.shape[:2]
        for _ in range(30):
            x0 = int(rng.integers(0, width - sw + 1))
            y0 = int(rng.integers(0, height - sh + 1))
            rect = np.array([x0, y0, x0 + sw, y0 + sh], np.float32)
            if not any(rect[0] < b[2] and b[0] < rect[2] and rect[1] < b[3] and b[1] < rect[3]
                       for b in taken):
                break
        else:
            continue
        img[y0:y0 + sh, x0:x0 + sw] = small
        taken.append(rect)
        out_cls.append(scls)
        out_boxes.append(sbox + rect[[0, 1, 0, 1]])
    return ProxyScene(img, np.concatenate(out_cls).astype(np.int64),
                      np.concatenate(out_boxes).astype(np.float32).reshape(-1, 4))

