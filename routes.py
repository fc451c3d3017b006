"""URL map: pages, JSON API, stored images, health, metrics, static files."""

from __future__ import annotations

from aiohttp import web

from service.web.handlers import api, deepstack, docs, export, login, pages, review
from settings import BASE_DIR

STATIC_DIR = BASE_DIR / "system" / "static"


def setup_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/", pages.index, name="index")
    router.add_get("/history", pages.history, name="history")
    router.add_get("/detections/{id}", pages.record_page, name="record")
    router.add_get("/detections/{id}/image", api.detection_image, name="record_image")

    router.add_post("/detect", api.detect, name="detect")
    router.add_get("/api/detections", api.list_detections, name="api_detections")
    router.add_get("/api/detections/{id}", api.get_detection, name="api_detection")
    router.add_put("/api/detections/{id}/review", review.put_review, name="api_review")
    router.add_delete("/api/detections/{id}/review", review.delete_review,
                      name="api_review_delete")
    router.add_get("/api/export", export.export, name="api_export")
    router.add_get("/api/stats", api.stats, name="api_stats")
    router.add_get("/api/models", api.models, name="api_models")

    # DeepStack / CodeProject.AI object detection ("list" before the model names).
    router.add_post("/v1/vision/detection", deepstack.detection, name="deepstack_detection")
    router.add_post("/v1/vision/custom/list", deepstack.list_models, name="deepstack_models")
    router.add_post("/v1/vision/custom/{model}", deepstack.custom, name="deepstack_custom")

    router.add_get("/login", login.login_form, name="login")
    router.add_post("/login", login.login, name="login_submit")
    router.add_post("/logout", login.logout, name="logout")

    router.add_get("/healthz", api.healthz, name="healthz")
    router.add_get("/readyz", api.readyz, name="readyz")
    router.add_get("/metrics", api.metrics, name="metrics")
    router.add_get("/openapi.json", docs.openapi, name="openapi")
    router.add_get("/docs", docs.docs, name="docs")
    router.add_static("/static", STATIC_DIR, name="static")
