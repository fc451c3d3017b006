"""URL map: pages, JSON API, model management, stored images, health, metrics, static
files; the DeepStack API as its own sub-app."""

from __future__ import annotations

from aiohttp import web

from service.web.apis import deepstack, native
from service.web.handlers import api, docs, events, export, login, models, pages, review
from service.web.uploads import defer_continue
from settings import BASE_DIR

STATIC_DIR = BASE_DIR / "system" / "static"


def setup_routes(app: web.Application) -> None:
    """Every POST answers ``Expect: 100-continue`` only once its body is wanted
    (``uploads.defer_continue``): after the checks that would refuse it."""
    router = app.router
    router.add_get("/", pages.index, name="index")
    router.add_get("/history", pages.history, name="history")
    router.add_get("/detections/{id}", pages.record_page, name="record")
    router.add_get("/detections/{id}/image", api.detection_image, name="record_image")

    router.add_post("/detect", native.detect, name="detect", expect_handler=defer_continue)
    router.add_get("/api/detections", api.list_detections, name="api_detections")
    router.add_get("/api/detections/{id}", api.get_detection, name="api_detection")
    router.add_put("/api/detections/{id}/review", review.put_review, name="api_review")
    router.add_delete("/api/detections/{id}/review", review.delete_review,
                      name="api_review_delete")
    router.add_get("/api/export", export.export, name="api_export")
    router.add_get("/api/stats", api.stats, name="api_stats")
    router.add_get("/api/models", api.models, name="api_models")
    router.add_get("/api/models/{name}", models.get_model, name="api_model")
    router.add_put("/api/models/{name}", models.put_model, name="api_model_put",
                   expect_handler=defer_continue)
    router.add_delete("/api/models/{name}", models.delete_model, name="api_model_delete")
    router.add_get("/api/events", events.list_events, name="api_events")
    router.add_get("/api/events/{name}", events.get_event, name="api_event")
    router.add_put("/api/events/{name}", events.put_event, name="api_event_put",
                   expect_handler=defer_continue)
    router.add_delete("/api/events/{name}", events.delete_event, name="api_event_delete")

    router.add_get("/login", login.login_form, name="login")
    router.add_post("/login", login.login, name="login_submit",
                    expect_handler=defer_continue)
    router.add_post("/logout", login.logout, name="logout",
                    expect_handler=defer_continue)

    router.add_get("/healthz", api.healthz, name="healthz")
    router.add_get("/readyz", api.readyz, name="readyz")
    router.add_get("/metrics", api.metrics, name="metrics")
    router.add_get("/openapi.json", docs.openapi, name="openapi")
    router.add_get("/docs", docs.docs, name="docs")
    router.add_static("/static", STATIC_DIR, name="static")

    # DeepStack / CodeProject.AI object detection: its own errors and access check.
    app.add_subapp(deepstack.PREFIX, deepstack.deepstack_app())
