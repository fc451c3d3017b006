"""HTML pages: the upload page, the detection history and one record.

The pages read the database through ``db``'s query functions and parse filters with the
same rules as the JSON API (``utils.params``); a filter that does not parse is reported on
the page (status 400) instead of as JSON. Everything is rendered with autoescaping.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from yarl import URL

import db
from model.detection import Detection
from model.draw import label_style, palette
from model.formats import ACCEPT_ATTRIBUTE, ACCEPTED_TEXT
from service import review
from service.web import keys, labels, params
from service.web.handlers import review as review_handlers

PAGE_SIZE = 24
FILTER_NAMES = ("label", "since", "until", "min_confidence", "filename", "model", "reviewed",
                "order", "source")
# The "needs review" view: unreviewed records, those the model was least sure of first.
NEEDS_REVIEW = {"reviewed": "no", "order": "least_confident"}
_OTHER_PARAMS = {"order": params.order, "source": params.stat_source}  # not filters
CHART_MAX_DAYS = 366  # a longer range shows its last year
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
    """GET /history: filtered, keyset-paged history with per-label and per-day counts of
    the records the filters select. Its ``Server-Timing`` header gives the database and
    the rendering time."""
    started = time.perf_counter()
    pool = request.app[keys.db_key]
    config = request.app[keys.config_key]
    filters, kept, errors = parse_filters(request.query)
    cursor = None
    try:
        cursor = params.cursor(request.query)
    except params.ParamError as exc:
        errors.append(exc.message)
    try:
        await labels.check_label(config, pool, filters.label)
    except labels.UnknownLabel as exc:
        return render_unknown_label(request, exc, kept)

    order, source = params.order(kept), params.stat_source(kept)
    if cursor is not None and (cursor.confidence is not None) != (order == "least_confident"):
        errors.append("cursor: was made for another order")
        cursor = None
    page, stats = await asyncio.gather(
        db.list_detections(pool, filters, limit=PAGE_SIZE, cursor=cursor, order=order),
        db.stats(pool, filters, source=source),
    )
    reviewed = await review.reviewed_ids(pool, [r.id for r in page.items])
    queried = time.perf_counter()
    # The label menu: the model's classes (the filtered one's, else every served
    # model's), then any other label seen in what the filters select.
    try:
        names = labels.model_names(config.model(filters.model).names) if filters.model \
            else tuple(labels.served_labels(config))
    except KeyError:  # a model no longer served: its records are still there
        names = tuple(labels.served_labels(config))
    menu = list(dict.fromkeys([*names, *(c.label for c in stats.labels)]))
    if filters.label is not None and filters.label not in menu:
        menu.append(filters.label)

    base = URL("/history")
    next_url = None
    if page.next_cursor is not None:
        next_url = str(base.with_query({**kept, "cursor": page.next_cursor.encode()}))
    several_models = len(config.models) > 1 or len({r.model for r in page.items}) > 1
    response = render("history.html", request, {
        "nav": "history",
        "models": [model.name for model in config.models],
        "filters": {name: _form_value(name, kept.get(name, "")) for name in FILTER_NAMES},
        "filtered": bool(kept),
        "errors": errors,
        "labels": menu,
        "records": [{**record_view(record), "reviewed": record.id in reviewed}
                    for record in page.items],
        "needs_review_url": str(base.with_query(NEEDS_REVIEW)),
        "needs_review": all(kept.get(k) == v for k, v in NEEDS_REVIEW.items()),
        "source": source,
        "show_model": several_models,
        "next_url": next_url,
        "first_url": str(base.with_query(kept)) if cursor is not None else None,
        "label_counts": label_counts(stats.labels, names, kept),
        "chart": day_chart(stats.days, since=filters.since, until=filters.until),
        # Phones: fewer, larger ticks (SVG text scales with the drawing).
        "chart_narrow": day_chart(stats.days, since=filters.since, until=filters.until,
                                  width=360, height=210, max_ticks=4),
        "totals": {"records": stats.records, "boxes": stats.boxes},
    }, status=400 if errors else 200)
    done = time.perf_counter()
    response.headers["Server-Timing"] = (
        f"db;dur={(queried - started) * 1000:.2f}, render;dur={(done - queried) * 1000:.2f}, "
        f"total;dur={(done - started) * 1000:.2f}")
    return response


def render_unknown_label(request: web.Request, error: labels.UnknownLabel,
                         kept: Mapping[str, str]) -> web.Response:
    """400: the error page, with a link to the history of each known label."""
    others = {k: v for k, v in kept.items() if k != "label"}
    links = [{"text": label, "url": str(URL("/history").with_query({**others, "label": label}))}
             for label in error.known]
    shown = error.label if len(error.label) <= 80 else error.label[:79] + "…"
    return render("error.html", request, {
        "status": 400, "title": "Unknown label",
        "message": f"No model has the class “{shown}”, and no record has a box with it. "
                   "These labels are known:",
        "links": links, "links_label": "Known labels",
    }, status=400)


async def record_page(request: web.Request) -> web.Response:
    """GET /detections/{id}: the annotated image and a table of its detections."""
    raw_id = request.match_info["id"]
    try:
        record = await db.get_detection(request.app[keys.db_key], params.record_id(raw_id))
    except (params.ParamError, db.RecordNotFound):
        shown = raw_id if len(raw_id) <= 80 else raw_id[:79] + "…"
        return render_error(request, 404, "Record not found",
                            f"There is no detection record with id “{shown}”.")
    pool = request.app[keys.db_key]
    reviewed = await review.get_review(pool, record.id)
    allowed = await review_handlers.review_labels(request.app[keys.config_key], pool, record)
    return render("record.html", request, {
        "nav": "history", "rec": record_view(record), "palette": palette(),
        "review": review_handlers.review_view(record, reviewed, allowed)})


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
            _OTHER_PARAMS.get(name, params.history_filter)({name: value})
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
    view["model_text"] = model_text(record.model)
    return view


def model_text(name: str) -> str:
    """A record's model as shown: the cfg name, then the weights name only when it
    differs (older records name the model ``cfg:weights``; newer ones by its config
    name)."""
    cfg, sep, weights = name.partition(":")
    if not sep or weights in ("", cfg):
        return cfg
    return f"{cfg} · {weights}"


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


CHART_MIN_DAYS = 14  # a shorter range is widened (a single day: one narrow bar)
MAX_BAR_WIDTH = 18.0
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def day_chart(days: Sequence[db.DayCount], *, since: datetime | None = None,
              until: datetime | None = None, width: int = 640, height: int = 200,
              max_days: int = CHART_MAX_DAYS, max_ticks: int = 7) -> dict[str, Any]:
    """Geometry of an SVG bar chart of images per day, on a time axis.

    The axis spans the selected range (``since`` .. ``until``, either taken from the data
    when not given), at least :data:`CHART_MIN_DAYS` days (a shorter range is widened
    towards the past), at most the last ``max_days`` days. Each day has one slot, and its
    bar is at most :data:`MAX_BAR_WIDTH` wide; days without records are empty slots.
    Ticks fall on whole days, weeks (Mondays) or months, at most ``max_ticks`` of them.
    """
    chart: dict[str, Any] = {"width": width, "height": height, "bars": [], "ticks": [],
                             "grid": [], "clipped": False}
    per_day = {d.day: d.records for d in days if d.records}
    if not per_day:
        return chart
    first = since.astimezone(timezone.utc).date() if since is not None else min(per_day)
    # until is exclusive: a bare date has become the next day's midnight.
    last = ((until.astimezone(timezone.utc) - timedelta(microseconds=1)).date()
            if until is not None else max(per_day))
    first, last = min(first, min(per_day)), max(last, max(per_day))
    clipped = (last - first).days + 1 > max_days
    if clipped:
        first = last - timedelta(days=max_days - 1)
    if (last - first).days + 1 < CHART_MIN_DAYS:
        first = last - timedelta(days=CHART_MIN_DAYS - 1)
    span = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    left, right, top, bottom = 40.0, 8.0, 12.0, 36.0
    baseline = height - bottom
    peak = max(per_day.get(day, 0) for day in span)
    scale_max, step = _nice_scale(peak)
    slot = (width - left - right) / len(span)
    bar_w = min(MAX_BAR_WIDTH, max(slot * 0.8, 1.0))
    bars = []
    for i, day in enumerate(span):
        count = per_day.get(day, 0)
        if not count:
            continue
        h = max((baseline - top) * count / scale_max, 1.5)
        bars.append(ChartBar(day=day.isoformat(), count=count,
                             x=round(left + (i + 0.5) * slot - bar_w / 2, 2),
                             y=round(baseline - h, 2), w=round(bar_w, 2), h=round(h, 2)))
    grid = [{"y": round(baseline - (baseline - top) * value / scale_max, 2), "text": f"{value:,}"}
            for value in range(0, scale_max + 1, step)]
    chart.update(
        bars=bars, left=left, right=width - right, top=top, baseline=baseline, max=peak,
        grid=grid, clipped=clipped, first=span[0].isoformat(), last=span[-1].isoformat(),
        ticks=_ticks(span, left, slot, max_ticks),
        description=_chart_description(span, per_day),
    )
    return chart


def _nice_scale(peak: int) -> tuple[int, int]:
    """The axis maximum and the grid step: 1, 2 or 5 times a power of ten, 2 to 5 lines."""
    peak = max(peak, 1)
    step = 1
    while True:
        for factor in (1, 2, 5):
            candidate = step * factor
            if -(-peak // candidate) <= 4:
                return candidate * -(-peak // candidate), candidate
        step *= 10


def _ticks(span: Sequence[date], left: float, slot: float,
           max_ticks: int = 7) -> list[dict[str, Any]]:
    """Day labels under the slots: every day, every 2 or 4 days, every Monday, every
    second or fourth Monday, or the first of each (or every 2nd, 3rd, 6th, 12th) month;
    the finest of these that gives at most ``max_ticks``."""
    n = len(span)
    choices: list[tuple[str, int]] = [("day", 1), ("day", 2), ("day", 4), ("week", 1),
                                      ("week", 2), ("week", 4), ("month", 1), ("month", 2),
                                      ("month", 3), ("month", 6), ("month", 12)]
    picked: list[tuple[int, date]] = []
    for unit, every in choices:
        if unit == "day":
            picked = [(i, d) for i, d in enumerate(span) if (n - 1 - i) % every == 0]
        elif unit == "week":
            mondays = [(i, d) for i, d in enumerate(span) if d.weekday() == 0]
            picked = mondays[::every]
        else:
            picked = [(i, d) for i, d in enumerate(span)
                      if d.day == 1 and (d.month - 1) % every == 0]
        if len(picked) <= max_ticks and (picked or n <= max_ticks):
            break
    ticks = []
    previous_year = None
    for i, day in picked:
        month_only = len(picked) > 1 and all(d.day == 1 for _, d in picked) and n > 62
        text = _MONTHS[day.month - 1] if month_only else f"{_MONTHS[day.month - 1]} {day.day}"
        sub = str(day.year) if day.year != previous_year else ""
        previous_year = day.year
        ticks.append({"x": round(left + (i + 0.5) * slot, 2), "text": text, "sub": sub,
                      "day": day.isoformat()})
    return ticks


def _chart_description(span: Sequence[date], per_day: Mapping[date, int]) -> str:
    total = sum(per_day.get(day, 0) for day in span)
    busiest = max(span, key=lambda day: per_day.get(day, 0))
    return (f"{total} images from {span[0].isoformat()} to {span[-1].isoformat()}; "
            f"busiest day {busiest.isoformat()} with {per_day.get(busiest, 0)}.")
