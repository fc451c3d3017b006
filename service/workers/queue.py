"""The jobs waiting for a worker, and how a batch is taken from them.

A :class:`Job` is a detect job (batchable unless ``solo``: a retry runs alone) or a
``("call", fn, args)`` message. :class:`JobQueue` is a FIFO from which a free worker
takes the head job and, behind it, up to a batch of batchable ones
(:meth:`JobQueue.take_batchable`); a job can be pushed to the front or withdrawn by a
caller that gave up.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from service.workers.protocol import DetectJob


@dataclass(eq=False)  # identity: jobs are found in the queue by ``is``, never by value
class Job:
    """A detect job (batchable unless ``solo``) or a ``("call", fn, args)`` message."""

    work: DetectJob | tuple[Any, ...]
    future: asyncio.Future[Any]
    solo: bool = False
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def batchable(self) -> bool:
        return isinstance(self.work, DetectJob) and not self.solo


class JobQueue:
    """FIFO of jobs waiting for a worker; a job can be pushed to the front or withdrawn."""

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()
        self._waiters: list[asyncio.Future[None]] = []

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job, *, front: bool = False) -> None:
        if front:
            self._jobs.appendleft(job)
        else:
            self._jobs.append(job)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def discard(self, job: Job) -> None:
        # A membership test first: deque.remove of a missing item formats repr(item) into
        # its ValueError, and a job's repr holds the image (8 ms for a 500 KB JPEG).
        if job in self._jobs:  # not yet taken by a worker
            self._jobs.remove(job)

    def drain(self) -> list[Job]:
        jobs = list(self._jobs)
        self._jobs.clear()
        return jobs

    async def wait(self) -> None:
        """Return once a job is queued."""
        while not self._jobs:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    async def get(self) -> Job:
        await self.wait()
        return self._jobs.popleft()

    def take_batchable(self, limit: int) -> list[Job]:
        """Up to ``limit`` batchable jobs from the head of the queue (stops at the first
        job that must run alone; skips jobs whose caller has gone)."""
        taken: list[Job] = []
        while self._jobs and len(taken) < limit and self._jobs[0].batchable:
            job = self._jobs.popleft()
            if not job.future.done():
                taken.append(job)
        return taken
