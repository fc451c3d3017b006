"""API tokens: created and revoked from the command line, stored only as SHA-256 hashes.

The tokens file (config ``auth.tokens_file``) is JSON, readable by its owner only::

    {"tokens": [{"name": "ci", "sha256": "<hex>", "created_at": "2026-11-25T19:00:00+00:00",
                 "admin": false}]}

A token is 256 random bits (``yolo_`` + URL-safe base64), shown once when created. A
hash of such a token cannot be inverted, so a plain SHA-256 is enough (no slow KDF is
needed, unlike passwords); checks compare hashes with ``hmac.compare_digest`` against
every entry. The service re-reads the file when it changes, so ``revoke`` takes effect
on the next request, without a restart, and without the database. ::

    python -m service.web.tokens create NAME     # prints the new token
    python -m service.web.tokens create NAME --admin   # may also manage models
    python -m service.web.tokens revoke NAME
    python -m service.web.tokens list
    # the file: --file PATH, else auth.tokens_file of --config / $YOLO_CONFIG / config.yaml,
    # the config main.py reads; where that is null (access control off, the default):
    # var/tokens.json, with a note that the service checks tokens only once the config
    # names that file (so tokens can be made before access control is switched on)
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_PREFIX = "yolo_"
# The tokens file the command uses while the config sets none (relative to the project
# root, like every path in the config; config/config.yaml suggests the same one).
DEFAULT_TOKENS_FILE = "var/tokens.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TokenError(ValueError):
    """A bad token name, a duplicate, an unknown name or an unreadable tokens file."""


@dataclass(frozen=True)
class TokenEntry:
    name: str
    sha256: str
    created_at: str
    admin: bool = False  # may manage models (PUT/DELETE /api/models/{name})


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def read_entries(path: Path) -> list[TokenEntry]:
    """The entries of a tokens file; an absent file holds none."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise TokenError(f"{path}: cannot read the tokens file: {exc}") from exc
    try:
        entries = [TokenEntry(str(item["name"]), str(item["sha256"]), str(item["created_at"]),
                              item.get("admin", False) is True)
                   for item in raw["tokens"]]
    except (KeyError, TypeError) as exc:
        raise TokenError(f"{path}: not a tokens file ({exc})") from exc
    if any(not re.fullmatch(r"[0-9a-f]{64}", entry.sha256) for entry in entries):
        raise TokenError(f"{path}: a token hash is not 64 hex digits")
    return entries


def _write_entries(path: Path, entries: Sequence[TokenEntry]) -> None:
    """Replace the file atomically (temp file, fsync, rename), mode 0600."""
    text = json.dumps({"tokens": [asdict(entry) for entry in entries]}, indent=2) + "\n"
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o600)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write cycles of concurrent commands."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "ab") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def create_token(path: Path, name: str, *, admin: bool = False) -> str:
    """Add a token called ``name`` (``admin``: it may manage models and event rules); return the token
    (it is not stored anywhere)."""
    if not NAME_PATTERN.match(name):
        raise TokenError(f"invalid token name {name!r}: 1-64 letters, digits, '_', '.', '-'")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with _locked(path):
        entries = read_entries(path)
        if any(entry.name == name for entry in entries):
            raise TokenError(f"a token named {name!r} exists; revoke it first")
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        _write_entries(path, [*entries, TokenEntry(name, token_hash(token), created, admin)])
    return token


def revoke_token(path: Path, name: str) -> None:
    with _locked(path):
        entries = read_entries(path)
        kept = [entry for entry in entries if entry.name != name]
        if len(kept) == len(entries):
            raise TokenError(f"no token named {name!r}")
        _write_entries(path, kept)


class TokenStore:
    """The service's view of the tokens file, re-read whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._hashes: tuple[tuple[str, str], ...] = ()  # (sha256, name)
        self._admins: frozenset[str] = frozenset()

    def _refresh(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            if self._stamp != (0, 0, 0):
                log.warning("tokens file %s does not exist: every request needing a token is "
                            "refused", self.path)
            self._stamp, self._hashes, self._admins = (0, 0, 0), (), frozenset()
            return
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        try:
            entries = read_entries(self.path)
        except TokenError as exc:  # keep refusing rather than fail open
            log.error("%s; every request needing a token is refused", exc)
            entries = []
        self._stamp = stamp
        self._hashes = tuple((entry.sha256, entry.name) for entry in entries)
        self._admins = frozenset(entry.name for entry in entries if entry.admin)

    def is_admin(self, name: str) -> bool:
        """The token called ``name`` was created with ``--admin``."""
        self._refresh()
        return name in self._admins

    def name_for(self, token: str) -> str | None:
        """The name of a valid token, else None (constant time in the token)."""
        return self.name_for_hash(token_hash(token))

    def name_for_hash(self, digest: str) -> str | None:
        self._refresh()
        found = None
        for stored, name in self._hashes:  # no early exit
            if hmac.compare_digest(stored, digest):
                found = name
        return found


# ---------------------------------------------------------------- command line

def _tokens_file(args: argparse.Namespace) -> tuple[Path, str | None]:
    """The tokens file, and a note for the admin when the service will not read it."""
    if args.file is not None:
        return Path(args.file).expanduser().resolve(), None
    from settings import BASE_DIR, load_config

    config = load_config(args.config)
    if config.auth.tokens_file is not None:
        return config.auth.tokens_file, None
    note = (f"note: access control is OFF: auth.tokens_file is null in {config.source}, so "
            f"the service checks no tokens. To turn it on, set\n"
            f"  auth:\n    tokens_file: {DEFAULT_TOKENS_FILE}\n"
            f"in that file and restart the service.\n")
    return BASE_DIR / DEFAULT_TOKENS_FILE, note


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.web.tokens",
                                     description="create, revoke and list API tokens")
    parser.add_argument("--file", help="the tokens file (default: auth.tokens_file)")
    parser.add_argument("--config", help="config file (default: $YOLO_CONFIG or "
                                         "config/config.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a token and print it")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true",
                        help="the token may also add, replace and remove models")
    commands.add_parser("revoke", help="revoke a token").add_argument("name")
    commands.add_parser("list", help="list token names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from settings import ConfigError

    try:
        path, note = _tokens_file(args)
        if args.command == "create":
            token = create_token(path, args.name, admin=args.admin)
            sys.stdout.write(f"{token}\n")
            sys.stderr.write(f"token {args.name!r} created in {path}; it is shown only "
                             "this once\n")
        elif args.command == "revoke":
            revoke_token(path, args.name)
            sys.stderr.write(f"token {args.name!r} revoked\n")
        else:
            for entry in read_entries(path):
                role = "\tadmin" if entry.admin else ""
                sys.stdout.write(f"{entry.name}\t{entry.created_at}{role}\n")
        if note is not None:
            sys.stderr.write(note)
    except (TokenError, ConfigError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
