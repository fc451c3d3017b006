"""Darknet's layout, as ``darknet detector train obj.data <cfg>`` (run in the extracted
folder) and ``python -m model.train --data`` read it::

    obj.names             one class per line; a box's class is its line number
    obj.data              classes, train, valid, names, backup
    train.txt valid.txt   the images of each split, one path per line
    images/<id>.<ext>     the images
    labels/<id>.txt       one line per box: class cx cy w h, relative to the image size

An image with nothing in it has an empty label file (a negative example).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import IO

from service.export.items import Box, ExportItem
from service.export.zipout import ZipOut

SPOOL_BYTES = 1 << 20


def label_lines(boxes: Sequence[Box], width: int, height: int,
                classes: dict[str, int]) -> str:
    """Darknet label lines: ``class cx cy w h``, relative, six decimals."""
    lines = []
    for b in boxes:
        cx, cy = (b.x1 + b.x2) / 2 / width, (b.y1 + b.y2) / 2 / height
        w, h = (b.x2 - b.x1) / width, (b.y2 - b.y1) / height
        lines.append(f"{classes[b.label]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


class YoloWriter:
    """Writes the layout above into a :class:`ZipOut` (image and label entries as items
    come; the lists, kept on disk meanwhile, at the end)."""

    def __init__(self, zip_out: ZipOut, names: Sequence[str]) -> None:
        self.zip = zip_out
        self.names = list(names)
        self.classes = {name: i for i, name in enumerate(self.names)}
        self.lists: dict[str, IO[bytes]] = {
            split: tempfile.SpooledTemporaryFile(SPOOL_BYTES) for split in ("train", "valid")}

    def add(self, item: ExportItem, image: bytes, ext: str) -> str:
        """Write one image and its labels; returns the image's path in the zip."""
        record = item.record
        path = f"images/{record.id}.{ext}"
        self.zip.add(path, image, compress=False)
        self.zip.add(f"labels/{record.id}.txt",
                     label_lines(item.boxes, record.width, record.height, self.classes).encode())
        self.lists[item.split].write(f"{path}\n".encode())
        return path

    def finish(self) -> list[tuple[str, IO[bytes]]]:
        """Write the small files; the spooled ones, for the caller to copy in."""
        self.zip.add("obj.names", "".join(f"{name}\n" for name in self.names).encode())
        self.zip.add("obj.data", (f"classes = {len(self.names)}\ntrain = train.txt\n"
                                  "valid = valid.txt\nnames = obj.names\n"
                                  "backup = backup/\n").encode())
        return [("train.txt", self.lists["train"]), ("valid.txt", self.lists["valid"])]

    def close(self) -> None:
        for spool in self.lists.values():
            spool.close()
