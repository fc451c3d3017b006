"""The parent's handle on one worker process: start, wait until warm, call, stop.

:class:`WorkerProcess` starts ``child.serve`` in a spawned process connected by a pipe.
Calls are asynchronous: the message is written from a thread (an image can be larger
than the pipe buffer) and the answer is awaited with ``loop.add_reader`` on the pipe, so
no thread waits while the model runs. A worker that dies (killed, out of memory, a crash
in native code) closes its end of the pipe: the pending call raises :class:`WorkerDied`
at once. One call at a time per process; the pool guarantees that.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

from service.workers import child
from service.workers.protocol import WorkerInfo, WorkerSpec

log = logging.getLogger(__name__)


class WorkerDied(RuntimeError):
    """The worker process ended (or was killed for hanging) before it answered."""


class WorkerCallError(RuntimeError):
    """The job raised inside the worker: a bug, not bad input (the worker lives on)."""


class WorkerProcess:
    """One spawned worker process and the parent's end of its pipe."""

    def __init__(self, ctx: SpawnContext, spec: WorkerSpec, index: int) -> None:
        self.index = index
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._process: SpawnProcess = ctx.Process(
            target=child.serve, args=(spec, index, child_conn, os.getpid()),
            name=f"yolo-worker-{index}", daemon=True)
        self._child_conn = child_conn
        self.info: WorkerInfo | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self) -> None:
        """Spawn the process (call from the event loop's thread: on Linux the worker's
        parent-death signal is tied to the thread that started it)."""
        self._process.start()
        self._child_conn.close()  # only the child holds its end: its death is our EOF

    async def wait_ready(self, timeout: float) -> WorkerInfo:
        """Wait for the worker's ``ready`` report (model loaded, warm-up done)."""
        kind, info = await self._receive(timeout)
        if kind != "ready" or not isinstance(info, WorkerInfo):
            raise WorkerDied(f"worker {self.index} sent {kind!r} instead of its ready report")
        self.info = info
        return info

    async def call(self, message: tuple[Any, ...], timeout: float) -> Any:
        """Send one job and return its answer.

        Raises WorkerDied when the process ends first, or when it has not answered within
        ``timeout`` seconds (it is then killed: a hung worker serves nobody).
        """
        try:
            await asyncio.to_thread(self._conn.send, message)
        except OSError as exc:
            raise self._died(f"could not send the job: {exc}") from exc
        kind, answer = await self._receive(timeout)
        if kind == "error":
            raise WorkerCallError(answer)
        return answer

    async def _receive(self, timeout: float) -> tuple[str, Any]:
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = self._conn.fileno()
        loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            async with asyncio.timeout(timeout):
                await readable
        except TimeoutError:
            self.kill()
            raise self._died(f"no answer within {timeout:g}s; killed") from None
        finally:
            loop.remove_reader(fd)
            # uvloop (libuv) leaves a watched fd non-blocking; the next job's send, in a
            # thread, must block until the worker has read an image larger than the
            # socket's buffer instead of failing with EAGAIN.
            os.set_blocking(fd, True)
        try:
            message = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise self._died("the process ended") from exc
        if not (isinstance(message, tuple) and len(message) == 2):
            raise self._died(f"unexpected message {message!r}")
        return message

    def _died(self, reason: str) -> WorkerDied:
        self._process.join(timeout=1.0)
        return WorkerDied(f"worker {self.index} (pid {self.pid}) died: {reason} "
                          f"({_exit_text(self._process.exitcode)})")

    def kill(self) -> None:
        """SIGKILL the process (no-op when it has ended)."""
        if self._process.pid is not None and self._process.exitcode is None:
            try:
                os.kill(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float) -> None:
        """Ask the worker to exit; kill it when it has not within ``timeout`` seconds."""
        if self._process.pid is None:
            self._conn.close()
            return
        try:
            self._conn.send(("stop",))
        except OSError:
            pass  # already gone
        await asyncio.to_thread(self._process.join, timeout)
        if self._process.exitcode is None:
            log.warning("worker %d (pid %s) did not stop within %.0fs; killing it",
                        self.index, self.pid, timeout)
            self.kill()
            await asyncio.to_thread(self._process.join, 5.0)
        self._conn.close()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"
