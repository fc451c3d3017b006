"""How many CPU threads each worker's forward pass may use."""

from __future__ import annotations

import os

from settings import WorkersConfig


def available_cores() -> int:
    """CPU cores this process may use (affinity-aware where the OS supports it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_worker(config: WorkersConfig, total_workers: int | None = None) -> int:
    """The configured thread count, else cores shared evenly between the workers of every
    model (``total_workers``; default ``max_workers``)."""
    if config.threads_per_worker is not None:
        return config.threads_per_worker
    return max(1, available_cores() // (total_workers or config.max_workers))


def lone_threads(config: WorkersConfig, total_workers: int | None = None) -> int:
    """Threads for a job that runs while every other worker is idle: all the cores when
    the thread count is automatic (0 when configured: then a worker keeps its own)."""
    if config.threads_per_worker is not None or (total_workers or config.max_workers) == 1:
        return 0
    return available_cores()
