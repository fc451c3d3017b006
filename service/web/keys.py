"""Typed keys for everything stored on the application."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web

from db import DatabaseHealth
from service.events.context import Events
from service.metrics import ServiceMetrics
from service.recorder import RecordWriter
from service.renditions import Renditions
from service.web.auth import Auth
from service.workers.models import ModelPools
from service.workers.pool import DetectorPool
from settings import Config
from utils.admission import Admission
from utils.embedded_pg import EmbeddedPostgres

config_key = web.AppKey("config", Config)
db_key = web.AppKey("db", asyncpg.Pool)
db_health_key = web.AppKey("db_health", DatabaseHealth)  # kept by db.pg_context's watcher
embedded_pg_key = web.AppKey("embedded_pg", EmbeddedPostgres)  # only when embedded
models_key = web.AppKey("models", ModelPools)  # every model's pool, by name
detector_pool_key = web.AppKey("detector_pool", DetectorPool)  # the default model's
warmup_task_key = web.AppKey("warmup_task", asyncio.Task)
records_key = web.AppKey("records", RecordWriter)
events_key = web.AppKey("events", Events)  # event rules, outbox, delivery
renditions_key = web.AppKey("renditions", Renditions)  # sized images (thumbnails)
auth_key = web.AppKey("auth", Auth)  # present only when access control is on
admission_key = web.AppKey("admission", Admission)
metrics_key = web.AppKey("metrics", ServiceMetrics)
openapi_key = web.AppKey("openapi", dict)  # the OpenAPI document, read at start-up
