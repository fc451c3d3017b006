"""COCO detection layout, as pycocotools (``COCO("annotations/instances.json")``) reads it::

    images/<id>.<ext>
    annotations/instances.json   info, licenses, categories (id = class + 1), images
                                 (file_name relative to images/), annotations (bbox
                                 [x, y, w, h] in pixels; "score" on model output)

Each image also carries ``record_id``, ``source`` (review or model) and ``split``
(COCO tools ignore keys they do not know). The two lists are kept on disk while the
images are written, then joined into instances.json.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import IO

from service.export.items import ExportItem
from service.export.yolo import SPOOL_BYTES
from service.export.zipout import ZipOut, copy_into


class CocoWriter:
    def __init__(self, zip_out: ZipOut, names: Sequence[str]) -> None:
        self.zip = zip_out
        self.names = list(names)
        self.categories = {name: i + 1 for i, name in enumerate(self.names)}
        self.images: IO[bytes] = tempfile.SpooledTemporaryFile(SPOOL_BYTES)
        self.annotations: IO[bytes] = tempfile.SpooledTemporaryFile(SPOOL_BYTES)
        self.image_id = 0
        self.annotation_id = 0

    @staticmethod
    def _append(spool: IO[bytes], entry: dict[str, object]) -> None:
        if spool.tell():
            spool.write(b",\n")
        spool.write(json.dumps(entry, separators=(",", ":")).encode())

    def add(self, item: ExportItem, image: bytes, ext: str) -> str:
        record = item.record
        path = f"images/{record.id}.{ext}"
        self.zip.add(path, image, compress=False)
        self.image_id += 1
        self._append(self.images, {
            "id": self.image_id, "file_name": f"{record.id}.{ext}", "width": record.width,
            "height": record.height, "record_id": str(record.id), "source": item.source,
            "split": item.split, "date_captured": record.created_at.isoformat()})
        for box in item.boxes:
            self.annotation_id += 1
            w, h = box.x2 - box.x1, box.y2 - box.y1
            entry: dict[str, object] = {
                "id": self.annotation_id, "image_id": self.image_id,
                "category_id": self.categories[box.label],
                "bbox": [round(box.x1, 2), round(box.y1, 2), round(w, 2), round(h, 2)],
                "area": round(w * h, 2), "iscrowd": 0}
            if box.confidence is not None:
                entry["score"] = round(box.confidence, 4)
            self._append(self.annotations, entry)
        return path

    def finish(self) -> list[tuple[str, IO[bytes]]]:
        head = json.dumps({
            "description": "YOLO detection service history export",
            "date_created": datetime.now(timezone.utc).isoformat()})
        categories = json.dumps([{"id": i, "name": name, "supercategory": "object"}
                                 for name, i in self.categories.items()])
        document = tempfile.SpooledTemporaryFile(SPOOL_BYTES)
        document.write(f'{{"info": {head}, "licenses": [], "categories": {categories},\n'
                       '"images": [\n'.encode())
        copy_into(document, self.images)
        document.write(b'],\n"annotations": [\n')
        copy_into(document, self.annotations)
        document.write(b"]}\n")
        self.images.close()
        self.annotations.close()
        self.images = document  # closed by close()
        return [("annotations/instances.json", document)]

    def close(self) -> None:
        self.images.close()
        self.annotations.close()
