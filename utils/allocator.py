"""Allocator settings that give large freed buffers back to the system (glibc only).

glibc serves a request over its mmap threshold (128 KiB to begin with) from its own
mapping, returned to the system when freed; but each such free raises the threshold to
that size (up to 32 MiB), so after the first large upload, later ones of that size come
from the heap, where memory freed after a burst stays held. :func:`keep_large_buffers_mapped`
fixes the threshold (which also stops the raising) and lowers the trim threshold, so
uploads' buffers are returned once the burst is over.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024  # buffers this large or larger: their own mapping
TRIM_THRESHOLD = 4 * 1024 * 1024  # free heap top beyond this is returned


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc's, or AttributeError)
    except (OSError, AttributeError):
        return None
    return libc


def keep_large_buffers_mapped() -> bool:
    """Set the thresholds for this process; False where the C library is not glibc."""
    libc = _libc()
    if libc is None:
        log.info("not glibc: allocator thresholds left as they are")
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) \
        and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def trim() -> bool:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim(0)``); False
    where there is no such call or nothing was given back."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return bool(libc.malloc_trim(0))
