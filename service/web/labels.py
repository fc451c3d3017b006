"""Which labels a history filter may name.

A label is *known* when a served model has that class (its names file) or a stored
record has a box with it (a model no longer served, a renamed class). Anything else is a
typo or a guess: ``label=nosuch`` gets 400 with the list of known labels, instead of an
empty answer that looks like "nothing found".
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import asyncpg

from service.history_stats import list_labels
from service.web.errors import ApiError
from settings import Config


class UnknownLabel(ApiError):
    """A label filter that no model and no record knows (400, with the known labels)."""

    def __init__(self, label: str, known: list[str]) -> None:
        super().__init__(400, "unknown_label",
                         f"label: unknown label {label!r}; known labels: {', '.join(known)}",
                         details={"known_labels": known})
        self.label = label
        self.known = known


@lru_cache(maxsize=16)
def _read_names(path: Path, mtime: float) -> tuple[str, ...]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def model_names(path: Path) -> tuple[str, ...]:
    """The class names of a configured model (read again only when the file changes)."""
    try:
        return _read_names(path, path.stat().st_mtime)
    except OSError:
        return ()


def served_labels(config: Config) -> list[str]:
    """The classes of every served model, in config order, each once."""
    return list(dict.fromkeys(name for model in config.models
                              for name in model_names(model.names)))


async def known_labels(config: Config, pool: asyncpg.Pool) -> list[str]:
    """The served models' classes, then the other labels found in the history (sorted)."""
    served = served_labels(config)
    stored = [label for label in await list_labels(pool) if label not in served]
    return [*served, *stored]


async def check_label(config: Config, pool: asyncpg.Pool, label: str | None) -> None:
    """Raise :class:`UnknownLabel` unless ``label`` is None or known."""
    if label is None or label in served_labels(config):
        return
    known = await known_labels(config, pool)
    if label not in known:
        raise UnknownLabel(label, known)
