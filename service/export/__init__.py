"""Export of the detection history as training data: a zip, written as it is read.

``run.write_export`` reads the records that the history filters select (one
snapshot of the database, a few rows at a time) and writes, through ``zipout.ZipOut``,
the layout of ``yolo.YoloWriter`` (Darknet: obj.names, obj.data, train.txt, valid.txt,
images/, labels/) or ``coco.CocoWriter`` (images/, annotations/instances.json), and a
manifest.jsonl in either. ``python -m service.export`` does the same into a file.
"""
