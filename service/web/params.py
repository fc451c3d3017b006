"""Parsing and checking of query parameters (API and pages share these rules).

Every function raises :class:`ParamError` naming the parameter; it is an ApiError, so
unless a handler catches it the client gets a JSON 400.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta, timezone
from uuid import UUID

from db import ORDERS, Cursor, HistoryFilter, InvalidCursor
from model.tiles import AUTO, OFF, TileSetting
from service.history_stats import STAT_SOURCES
from service.web.errors import ApiError

MAX_FILTER_LENGTH = 200


class ParamError(ApiError):
    """A query parameter is malformed or out of range (a 400 when it reaches the middleware)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(400, "bad_parameter", f"{name}: {message}")
        self.name = name


def _text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    if value is None or value.strip() == "":
        return None
    if len(value) > MAX_FILTER_LENGTH or any(ord(ch) < 32 for ch in value):
        raise ParamError(name, f"must be at most {MAX_FILTER_LENGTH} printable characters")
    return value.strip()


def unit_interval(query: Mapping[str, str], name: str, default: float | None,
                  *, allow_zero: bool = False) -> float | None:
    """A float in (0, 1] (or [0, 1] with allow_zero); ``default`` when absent."""
    raw = _text(query, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ParamError(name, f"must be a number, got {raw!r}") from None
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    if not math.isfinite(value) or not low_ok or value > 1.0:
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ParamError(name, f"must be within {interval}, got {raw!r}")
    return value


def timestamp(query: Mapping[str, str], name: str, *, end_of_day: bool = False) -> datetime | None:
    """ISO 8601 date or date-time; naive values are UTC.

    A bare date means the start of that day, or with ``end_of_day`` the start of the next
    day (so ``until=2024-05-01`` includes all of 1 May).
    """
    raw = _text(query, name)
    if raw is None:
        return None
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            if end_of_day:
                day += timedelta(days=1)
            return datetime.combine(day, time(), tzinfo=timezone.utc)
        value = datetime.fromisoformat(raw.replace(" ", "+") if "T" in raw else raw)
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        # In UTC, as the database compares it: an offset can push it out of range.
        return value.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise ParamError(name, f"must be an ISO 8601 date or date-time from 0001 to 9999 "
                               f"(UTC), got {raw!r}") from None


def history_filter(query: Mapping[str, str]) -> HistoryFilter:
    """label, since, until, min_confidence, filename, model, reviewed -> HistoryFilter."""
    since = timestamp(query, "since")
    until = timestamp(query, "until", end_of_day=True)
    if since is not None and until is not None and since >= until:
        raise ParamError("until", "must be later than since")
    return HistoryFilter(
        label=_text(query, "label"),
        since=since,
        until=until,
        min_confidence=unit_interval(query, "min_confidence", None, allow_zero=True),
        filename=_text(query, "filename"),
        model=_text(query, "model"),
        reviewed=reviewed(query),
    )


def reviewed(query: Mapping[str, str]) -> bool | None:
    """reviewed=yes|no: only reviewed / only unreviewed records; absent: both."""
    value = choice(query, "reviewed", ("yes", "no"), "")
    return None if value == "" else value == "yes"


def order(query: Mapping[str, str]) -> str:
    """order=newest (the default) | least_confident (``db.ORDERS``)."""
    return choice(query, "order", ORDERS, ORDERS[0])


def stat_source(query: Mapping[str, str]) -> str:
    """source=model (the default: the model's boxes) | review (the reviewed boxes)."""
    return choice(query, "source", STAT_SOURCES, STAT_SOURCES[0])


def limit(query: Mapping[str, str], default: int = 50, maximum: int = 200) -> int:
    return positive_int(query, "limit", default, maximum)


def cursor(query: Mapping[str, str], order: str = "newest") -> Cursor | None:
    """The paging cursor; one made for another ``order`` is refused."""
    raw = _text(query, "cursor")
    if raw is None:
        return None
    try:
        decoded = Cursor.decode(raw)
    except InvalidCursor:
        raise ParamError("cursor", "is not a cursor returned by this service") from None
    if (decoded.confidence is not None) != (order == "least_confident"):
        raise ParamError("cursor", f"was made for another order than {order}")
    return decoded


def record_id(raw: str) -> UUID:
    """A record id from the URL; raises ParamError (callers may prefer a 404)."""
    try:
        return UUID(raw)
    except ValueError:
        raise ParamError("id", f"is not a record id: {raw!r}") from None


def path_record_id(match_info: Mapping[str, str]) -> UUID:
    """The record id of a URL such as ``/api/detections/{id}``: 404 when it is none (as
    for an id no record has)."""
    try:
        return record_id(match_info["id"])
    except ParamError:
        raise ApiError(404, "not_found", f"no detection with id {match_info['id']!r}") \
            from None


def source(query: Mapping[str, str], fields: Mapping[str, str] | None = None) -> str | None:
    """Where the image came from (``source=camera-3``: a query parameter, or a form
    field of the DeepStack routes), recorded with the detection; None when not said."""
    value = _text(query, "source")
    if value is None and fields is not None:
        value = _text(fields, "source")
    return value


def tiles(query: Mapping[str, str], name: str = "tiles") -> TileSetting | None:
    """``auto`` or ``off`` (the model's setting when absent). A request may not ask for
    windows of its own size: their number is the model's operator's to bound."""
    raw = _text(query, name)
    if raw is None:
        return None
    value = raw.lower()
    if value == "auto":
        return AUTO
    if value == "off":
        return OFF
    raise ParamError(name, f"must be auto or off, got {raw[:40]!r}")


def text(query: Mapping[str, str], name: str) -> str | None:
    """A short printable value; None when absent or empty."""
    return _text(query, name)


def positive_int(query: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    """An integer within 1..maximum; ``default`` when absent."""
    raw = _text(query, name)
    if raw is None:
        return default
    # ASCII digits only: "²" is a digit to str.isdigit() but not to int().
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise ParamError(name, f"must be an integer within 1..{maximum}, got {raw!r}")
    return int(raw)


def choice(query: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    """One of ``choices``; ``default`` when absent."""
    raw = _text(query, name)
    if raw is None:
        return default
    if raw not in choices:
        raise ParamError(name, f"must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def optional_flag(query: Mapping[str, str], name: str, default: bool) -> bool:
    """``flag``, with ``default`` when absent."""
    if not (query.get(name) or "").strip():
        return default
    return flag(query, name)


def flag(query: Mapping[str, str], name: str) -> bool:
    raw = (query.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ParamError(name, f"must be 0 or 1, got {raw!r}")
