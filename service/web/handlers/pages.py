"""HTML pages: the upload page, the detection history and one record.

The pages read the database through ``db``'s query functions and parse filters with the
same rules as the JSON API (``utils.params``); a filter that does not parse is reported on
the page (status 400) instead of as JSON. Everything is rendered with autoescaping.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from yarl import URL

import db
from model.detection import Detection
from model.draw import label_style, palette
from model.formats import ACCEPT_ATTRIBUTE, ACCEPTED_TEXT
from service.web import keys, params

PAGE_SIZE = 24
FILTER_NAMES = ("label", "since", "until", "min_confidence", "filename", "model")
CHART_MAX_DAYS = 60
# Real street photos a newcomer can try (system/static/examples, CC BY 4.0: its
# CREDITS.md), for the shipped traffic-light model.
EXAMPLES = ({"file": "street-green.jpg", "title": "Green light"},
            {"file": "street-red.jpg", "title": "Red lights"},
            {"file": "closeup-yellow.jpg", "title": "Amber light"})


# ---------------------------------------------------------------- pages

async def index(request: web.Request) -> web.Response:
    """GET /: choose or drop images; the page's script sends them to POST /detect."""
    config = request.app[keys.config_key]
    pools = request.app[keys.models_key]
    return render("index.html", request, {
        "nav": "detect",
        "models": [pools.describe(pool) for pool in pools],
        "examples": EXAMPLES,
        "accept": ACCEPT_ATTRIBUTE,
        "accepted_text": ACCEPTED_TEXT,
        "palette": palette(),
        "max_upload_mb": f"{config.server.max_upload_mb:g}",
    })


async def history(request: web.Request) -> web.Response:
    """GET /history: filtered, keyset-paged history with per-label and per-day counts."""
    pool = request.app[keys.db_key]
    filters, kept, errors = parse_filters(request.query)
    cursor = None
    try:
        cursor = params.cursor(request.query)
    except params.ParamError as exc:
        errors.append(exc.message)

    page, stats = await asyncio.gather(
        db.list_detections(pool, filters, limit=PAGE_SIZE, cursor=cursor),
        db.stats(pool, since=filters.since, until=filters.until, model=filters.model),
    )
    # The label menu: the model's classes (the filtered one's, else the default's), then
    # any other label seen in the period.
    config = request.app[keys.config_key]
    try:
        shown_model = config.model(filters.model)
    except KeyError:  # a model no longer served: its records are still there
        shown_model = config.default_model
    names = model_names(shown_model.names)
    labels = list(dict.fromkeys([*names, *(c.label for c in stats.labels)]))
    if filters.label is not None and filters.label not in labels:
        labels.append(filters.label)

    base = URL("/history")
    next_url = None
    if page.next_cursor is not None:
        next_url = str(base.with_query({**kept, "cursor": page.next_cursor.encode()}))
    return render("history.html", request, {
        "nav": "history",
        "models": [model.name for model in config.models],
        "filters": {name: _form_value(name, kept.get(name, "")) for name in FILTER_NAMES},
        "filtered": bool(kept),
        "errors": errors,
        "labels": labels,
        "records": [record_view(record) for record in page.items],
        "next_url": next_url,
        "first_url": str(base.with_query(kept)) if cursor is not None else None,
        "label_counts": label_counts(stats.labels, names, kept),
        "chart": day_chart(stats.days),
        "totals": {"records": stats.records, "boxes": stats.boxes},
    }, status=400 if errors else 200)


async def record_page(request: web.Request) -> web.Response:
    """GET /detections/{id}: the annotated image and a table of its detections."""
    raw_id = request.match_info["id"]
    try:
        record = await db.get_detection(request.app[keys.db_key], params.record_id(raw_id))
    except (params.ParamError, db.RecordNotFound):
        shown = raw_id if len(raw_id) <= 80 else raw_id[:79] + "…"
        return render_error(request, 404, "Record not found",
                            f"There is no detection record with id “{shown}”.")
    return render("record.html", request, {"nav": "history", "rec": record_view(record)})


def render_error(request: web.Request, status: int, title: str, message: str) -> web.Response:
    """An HTML error page (for browsers; the API answers errors in JSON)."""
    return render("error.html", request,
                   {"status": status, "title": title, "message": message}, status=status)


def render(template: str, request: web.Request, context: dict[str, Any],
            status: int = 200) -> web.Response:
    context.setdefault("nav", None)
    context["color_style"] = color_style
    context["signed_in"] = keys.auth_key in request.app  # else the page was refused
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


# ---------------------------------------------------------------- filters

def parse_filters(query: Mapping[str, str]) -> tuple[db.HistoryFilter, dict[str, str], list[str]]:
    """The history filter, the raw values that were accepted, and messages for the rest.

    Each parameter is checked on its own with the API's rules, so one bad value does not
    throw away the others.
    """
    kept: dict[str, str] = {}
    errors: list[str] = []
    for name in FILTER_NAMES:
        value = query.get(name, "").strip()
        if not value:
            continue
        try:
            params.history_filter({name: value})
        except params.ParamError as exc:
            errors.append(exc.message)
        else:
            kept[name] = value
    try:
        filters = params.history_filter(kept)
    except params.ParamError as exc:  # each value is fine alone, the range is empty
        errors.append(exc.message)
        kept.pop("until")
        filters = params.history_filter(kept)
    return filters, kept, errors


def _form_value(name: str, value: str) -> str:
    """What a form field shows: a date input takes only the YYYY-MM-DD part."""
    if name in ("since", "until") and value:
        return value[:10]
    return value


# ---------------------------------------------------------------- view data

def record_view(record: db.Record) -> dict[str, Any]:
    """A record as the templates use it: JSON fields plus display strings."""
    view = record.to_json()
    created = record.created_at.astimezone(timezone.utc)
    view["created_iso"] = created.isoformat()
    view["created_text"] = created.strftime("%Y-%m-%d %H:%M:%S UTC")
    view["labels"] = label_summary(record.detections)
    return view


def label_summary(detections: Sequence[Detection]) -> list[dict[str, Any]]:
    """One entry per label: box count and best confidence, most frequent first."""
    summary: dict[str, dict[str, Any]] = {}
    for det in detections:
        entry = summary.setdefault(det.label, {"label": det.label, "class_id": det.class_id,
                                               "count": 0, "best": 0.0})
        entry["count"] += 1
        entry["best"] = max(entry["best"], det.confidence)
    return sorted(summary.values(), key=lambda e: (-e["count"], -e["best"], e["label"]))


def color_style(class_id: int, label: str = "") -> str:
    """CSS custom properties for a class: the colour ``model.draw`` uses on the annotated
    images (so page and image agree: by the label for a traffic light, else by the id)
    and a readable text colour on top of it."""
    style = label_style(label, int(class_id))
    return f"--c: {style.color}; --c-text: {style.text_color}"


@lru_cache(maxsize=8)
def _read_names(path: Path, mtime: float) -> tuple[str, ...]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def model_names(path: Path) -> tuple[str, ...]:
    """The class names of the configured model (read again only when the file changes)."""
    try:
        return _read_names(path, path.stat().st_mtime)
    except OSError:
        return ()


def class_id_for(label: str, names: Sequence[str]) -> int:
    """The class id of a label in the current model; a stable stand-in for other labels."""
    if label in names:
        return names.index(label)
    return len(names) + zlib.crc32(label.encode()) % 997


def label_counts(counts: Sequence[db.LabelCount], names: Sequence[str],
                 kept: Mapping[str, str]) -> list[dict[str, Any]]:
    """Rows for the per-label list: boxes, images, bar share and a filter link."""
    most = max((c.boxes for c in counts), default=0)
    dates = {k: v for k, v in kept.items() if k in ("since", "until")}
    ordered = sorted(counts, key=lambda c: (-c.boxes, -c.records, c.label))
    return [{
        "label": c.label,
        "class_id": class_id_for(c.label, names),
        "boxes": c.boxes,
        "records": c.records,
        "share": round(100 * c.boxes / most, 1) if most else 0,
        "url": str(URL("/history").with_query({"label": c.label, **dates})),
    } for c in ordered]


@dataclass(frozen=True)
class ChartBar:
    day: str
    count: int
    x: float
    y: float
    w: float
    h: float


def day_chart(days: Sequence[db.DayCount], *, width: int = 640, height: int = 180,
              max_days: int = CHART_MAX_DAYS) -> dict[str, Any]:
    """Geometry of an SVG bar chart of images per day.

    Days without records between the first and the last one get empty slots; at most the
    last ``max_days`` days are shown.
    """
    chart: dict[str, Any] = {"width": width, "height": height, "bars": [], "ticks": [],
                             "clipped": False}
    if not days:
        return chart
    per_day = {d.day: d.records for d in days}
    last = max(per_day)
    first = max(min(per_day), last - timedelta(days=max_days - 1))
    span = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    left, top, bottom = 34.0, 10.0, 22.0
    baseline = height - bottom
    peak = max(per_day.get(day, 0) for day in span) or 1
    slot = (width - left) / len(span)
    gap = min(4.0, slot * 0.2)
    bars = []
    for i, day in enumerate(span):
        count = per_day.get(day, 0)
        h = (baseline - top) * count / peak
        bars.append(ChartBar(day=day.isoformat(), count=count,
                             x=round(left + i * slot + gap / 2, 2), y=round(baseline - h, 2),
                             w=round(slot - gap, 2), h=round(h, 2)))
    chart.update(
        bars=bars, left=left, top=top, baseline=baseline, max=peak,
        clipped=first > min(per_day),
        ticks=_ticks(span, left, slot),
        description=_chart_description(span, per_day),
    )
    return chart


def _ticks(span: Sequence[date], left: float, slot: float) -> list[dict[str, Any]]:
    """Up to six evenly spaced day labels under the bars."""
    step = max(1, -(-len(span) // 6))
    return [{"x": round(left + (i + 0.5) * slot, 2),
             "text": day.strftime("%b %d").replace(" 0", " ")}
            for i, day in enumerate(span) if i % step == 0]


def _chart_description(span: Sequence[date], per_day: Mapping[date, int]) -> str:
    total = sum(per_day.get(day, 0) for day in span)
    busiest = max(span, key=lambda day: per_day.get(day, 0))
    return (f"{total} images from {span[0].isoformat()} to {span[-1].isoformat()}; "
            f"busiest day {busiest.isoformat()} with {per_day.get(busiest, 0)}.")
