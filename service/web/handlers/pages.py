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
from datetime import timezone
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from yarl import URL

import db
from model.detection import Detection
from model.draw import label_style, palette
from model.formats import ACCEPT_ATTRIBUTE, ACCEPTED_TEXT
from service import history_stats, review
from service.web import keys, labels, params
from service.web.chart import day_chart
from service.web.handlers import review as review_handlers

PAGE_SIZE = 24
FILTER_NAMES = ("label", "since", "until", "min_confidence", "filename", "model", "reviewed",
                "order", "source")
# The "needs review" view: unreviewed records, those the model was least sure of first.
NEEDS_REVIEW = {"reviewed": "no", "order": "least_confident"}
_OTHER_PARAMS = {"order": params.order, "source": params.stat_source}  # not filters
# Real street photos a newcomer can try (system/static/examples, CC BY 4.0: its
# CREDITS.md), for the shipped traffic-light model.
EXAMPLES = ({"file": "street-green.jpg", "title": "Green light"},
            {"file": "street-red.jpg", "title": "Red lights"},
            {"file": "closeup-yellow.jpg", "title": "Amber light"})


# ---------------------------------------------------------------- pages

async def index(request: web.Request) -> web.Response:
    """GET /: choose or drop images; the page's script sends them to POST /detect."""
    config = request.app[keys.config_key]
    servers = request.app[keys.servers_key]
    return render("index.html", request, {
        "nav": "detect",
        "models": [servers.describe(server) for server in servers],
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
    servers = request.app[keys.servers_key]
    filters, kept, errors = parse_filters(request.query)
    cursor = None
    try:
        cursor = params.cursor(request.query)
    except params.ParamError as exc:
        errors.append(exc.message)
    try:
        await labels.check_label(servers, pool, filters.label)
    except labels.UnknownLabel as exc:
        return render_unknown_label(request, exc, kept)

    order, source = params.order(kept), params.stat_source(kept)
    if cursor is not None and (cursor.confidence is not None) != (order == "least_confident"):
        errors.append("cursor: was made for another order")
        cursor = None
    page, stats = await asyncio.gather(
        db.list_detections(pool, filters, limit=PAGE_SIZE, cursor=cursor, order=order),
        history_stats.stats(pool, filters, source=source),
    )
    reviewed = await review.reviewed_ids(pool, [r.id for r in page.items])
    queried = time.perf_counter()
    # The label menu: the model's classes (the filtered one's, else every served
    # model's), then any other label seen in what the filters select.
    if filters.model in servers:
        names = servers.get(filters.model).classes
    else:  # every model, or one no longer served (its records are still there)
        names = tuple(labels.served_labels(servers))
    menu = list(dict.fromkeys([*names, *(c.label for c in stats.labels)]))
    if filters.label is not None and filters.label not in menu:
        menu.append(filters.label)

    base = URL("/history")
    next_url = None
    if page.next_cursor is not None:
        next_url = str(base.with_query({**kept, "cursor": page.next_cursor.encode()}))
    several_models = len(servers) > 1 or len({r.model for r in page.items}) > 1
    response = render("history.html", request, {
        "nav": "history",
        "models": servers.names,
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
    allowed = await review_handlers.review_labels(request.app[keys.servers_key], pool, record)
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


def label_counts(counts: Sequence[history_stats.LabelCount], names: Sequence[str],
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
