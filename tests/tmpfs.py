"""A small real filesystem for full-disk tests: a tmpfs of a few MiB, mounted and
unmounted by the test.

As root (CI) it is mounted here. Elsewhere :func:`run_as_namespace_root` runs a test's
body in a child process under ``unshare -rm`` (a user and mount namespace, where the
mapped root may mount a tmpfs); a test that needs more than root-in-a-namespace allows
(PostgreSQL refuses to run as root) skips with the reason instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from settings import BASE_DIR


class MountRefused(RuntimeError):
    """This process may not mount a filesystem."""


@contextmanager
def tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    """``path`` (created) with a tmpfs of ``size_kib`` KiB mounted on it."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        raise MountRefused("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755",
                              "tmpfs", str(path)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        raise MountRefused(f"mount -t tmpfs failed: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def run_as_namespace_root(function: str, *args: str) -> None:
    """Run ``module:function(*args)`` in a child process under ``unshare -rm``; fail the
    calling test when it fails, skip it when no user namespace can be made."""
    if shutil.which("unshare") is None:
        pytest.skip("cannot mount a tmpfs: not root, and no unshare(1) for a user namespace")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True,
                           check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: not root, and unshare -rm failed "
                    f"({probe.stderr.strip()})")
    module, _, name = function.partition(":")
    code = (f"import sys; from {module} import {name}; {name}(*sys.argv[1:])")
    child = subprocess.run(["unshare", "-rm", sys.executable, "-c", code, *args],
                           cwd=BASE_DIR, capture_output=True, text=True, check=False,
                           timeout=300)
    assert child.returncode == 0, f"{function} failed under unshare -rm:\n{child.stderr[-4000:]}"
