"""The detection defaults, one set for the engine's command line (``python -m
model.detect``) and the service (``settings.py`` takes its defaults from here: ``model/``
stands alone and cannot read the service's config, so the numbers live on this side).

A model's own ``img_size``, ``conf_thres``, ``iou_thres``, ``agnostic_nms`` and
``max_det`` (in the config, or as flags) override them.
"""

from __future__ import annotations

IMG_SIZE = 512  # square network input, pixels
CONF_THRES = 0.5  # least confidence of a detection kept
IOU_THRES = 0.45  # NMS: boxes overlapping more than this (IoU) with a better one go
AGNOSTIC_NMS = False  # NMS per class (True: across classes)
MAX_DET = 300  # detections per image at most
