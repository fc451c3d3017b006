"""Which labels a history filter may name.

A label is *known* when a served model has that class (its names file) or a stored
record has a box with it (a model no longer served, a renamed class). Anything else is a
typo or a guess: ``label=nosuch`` gets 400 with the list of known labels, instead of an
empty answer that looks like "nothing found".
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from service.history_stats import list_labels
from service.serving.server import ModelServer
from service.web.errors import ApiError


class UnknownLabel(ApiError):
    """A label filter that no model and no record knows (400, with the known labels)."""

    def __init__(self, label: str, known: list[str]) -> None:
        super().__init__(400, "unknown_label",
                         f"label: unknown label {label!r}; known labels: {', '.join(known)}",
                         details={"known_labels": known})
        self.label = label
        self.known = known


def served_labels(servers: Iterable[ModelServer]) -> list[str]:
    """The classes of every served model (read once per version by its server), in
    order, each once."""
    return list(dict.fromkeys(name for server in servers for name in server.classes))


async def known_labels(servers: Iterable[ModelServer], pool: asyncpg.Pool) -> list[str]:
    """The served models' classes, then the other labels found in the history (sorted)."""
    served = served_labels(servers)
    stored = [label for label in await list_labels(pool) if label not in served]
    return [*served, *stored]


async def check_label(servers: Iterable[ModelServer], pool: asyncpg.Pool,
                      label: str | None) -> None:
    """Raise :class:`UnknownLabel` unless ``label`` is None or known."""
    if label is None or label in served_labels(servers):
        return
    known = await known_labels(servers, pool)
    if label not in known:
        raise UnknownLabel(label, known)
