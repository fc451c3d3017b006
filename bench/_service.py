"""A throw-away service instance for benchmarks: temp config, subprocess, readiness, stop.

:func:`write_config` writes a YAML derived from a base config file (same keys, so it
follows the service's schema) with a temp embedded PostgreSQL and spool and any dotted
overrides.  :class:`ServiceProcess` runs ``python main.py --config PATH`` from the project
root (``DATABASE_URL`` and ``YOLO_CONFIG`` removed from its environment unless given in
``env``), waits until ``GET /readyz`` answers 200 and stops it with SIGTERM (the service's
graceful shutdown), then SIGKILL if it hangs.  Its log goes to a file; the tail is shown
when the service fails to start.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import aiohttp
import yaml

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
READY_POLL_S = 0.5


@contextmanager
def scratch_dir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary folder for a throw-away instance (config, log, pgdata); removed after
    use unless ``keep``."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    finally:
        if keep:
            log.info("kept %s (service.yaml, service.log, pgdata)", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


class ServiceError(RuntimeError):
    """The service could not be started or did not become ready."""


def run_in_scratch(prefix: str, keep: bool, work: Callable[[Path], int]) -> int:
    """A benchmark's exit status: ``work`` run in a :func:`scratch_dir`; a service that
    could not be started or made ready is logged and gives 1."""
    try:
        with scratch_dir(prefix, keep) as workdir:
            return work(workdir)
    except ServiceError as exc:
        log.error("%s", exc)
        return 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now (the OS picks it; a small race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted == "a.b"``, creating mappings."""
    *parents, last = dotted.split(".")
    node = data
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
    node[last] = value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"workers.max_queue=64"`` -> ``("workers.max_queue", 64)`` (value read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(raw)


def write_config(base: Path, path: Path, workdir: Path,
                 overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Write the benchmark's service config to ``path`` and return it.

    From ``base``: everything; replaced: an embedded PostgreSQL and the spool under
    ``workdir``; then ``overrides`` (dotted keys) on top.
    """
    data = yaml.safe_load(base.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ServiceError(f"{base}: the top level must be a mapping")
    data = copy.deepcopy(data)
    set_dotted(data, "postgres.embedded", True)
    set_dotted(data, "postgres.data_dir", str(workdir / "pgdata"))
    set_dotted(data, "storage.spool_dir", str(workdir / "spool"))
    for key, value in overrides.items():
        set_dotted(data, key, value)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return data


class ServiceProcess:
    """``main.py`` in a subprocess on 127.0.0.1:``port``, owned by this object.

    ``env``: environment variables for the service on top of this process's, e.g.
    ``DATABASE_URL`` for an external PostgreSQL.
    """

    def __init__(self, config: Path, port: int, log_path: Path, *,
                 host: str = "127.0.0.1", env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.log_path = log_path
        self.url = f"http://{host}:{port}"
        self.env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The service's pid while it runs (``None`` before start and after stop)."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Started and neither exited nor stopped."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        env = dict(os.environ)
        env.pop("DATABASE_URL", None)  # the temp config's database, not another one
        env.pop("YOLO_CONFIG", None)
        env.update(self.env)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "main.py", "--config", str(self.config),
                   "--host", self.host, "--port", str(self.port)]
        log.info("starting the service: %s", " ".join(command))
        self._process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env,
                                         stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT)

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float) -> dict[str, Any]:
        """Poll ``/readyz`` until it answers 200; return its JSON body."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise ServiceError(f"the service exited (code {code}) before it was ready\n"
                                   f"{self.log_tail()}")
            try:
                async with session.get(f"{self.url}/readyz") as response:
                    if response.status == 200:
                        body: dict[str, Any] = await response.json()
                        return body
                    last = f"HTTP {response.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(READY_POLL_S)
        raise ServiceError(f"the service was not ready after {timeout:.0f} s ({last})\n"
                           f"{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (graceful shutdown), then SIGKILL after ``timeout`` seconds.

        Returns the exit code (negative: killed by that signal; ``None``: never started
        or stopped already).
        """
        process, self._process = self._process, None
        try:
            if process is None:
                return None
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning("the service did not stop in %.0f s: killing it", timeout)
                    process.kill()
                    process.wait()
            return process.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def kill(self) -> None:
        """SIGKILL (a crash: no shutdown at all) and wait for the exit."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no service log: {exc})"
        tail = text.splitlines()[-lines:]
        return "--- service log (last lines) ---\n" + "\n".join(tail)
