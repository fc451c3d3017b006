"""Fault injection for real worker processes (tests only).

``detect_with_faults`` is handed to ``DetectorPool(detect_fn=...)`` and runs inside the
spawned workers in place of ``child.detect_batch``. An image carrying a marker in a
JPEG comment segment (valid JPEG, decoded normally) makes the worker misbehave for real:

- ``fault:crash``: the worker SIGKILLs itself (what the OOM killer or a segfault does);
- ``fault:sleep=S``: the worker sleeps S seconds before detecting (a slow job).

A batch holding such an image misbehaves as a whole; the images then go to
``child.detect_batch``.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import time
from collections.abc import Sequence

from service.workers import child, protocol

_SLEEP = re.compile(rb"fault:sleep=([0-9]+(?:\.[0-9]+)?)")


def detect_with_faults(jobs: Sequence[protocol.DetectJob],
                       lone: bool = False) -> list[protocol.DetectResult | protocol.DetectFailure]:
    for job in jobs:
        head = job.data[:512]
        if b"fault:crash" in head:
            os.kill(os.getpid(), signal.SIGKILL)
        match = _SLEEP.search(head)
        if match:
            time.sleep(float(match.group(1)))
    return child.detect_batch(jobs, lone)


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The JPEG with a COM segment holding ``text`` right after its SOI marker."""
    assert jpeg[:2] == b"\xff\xd8"
    body = text.encode("ascii")
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]
