"""Typed keys for everything stored on the application."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web

from service.database_health import DatabaseHealth
from service.events.context import Events
from service.metrics import ServiceMetrics
from service.recorder import RecordWriter
from service.renditions import Renditions
from service.web.auth import Auth
from service.serving.servers import ModelServers
from settings import Config
from utils.admission import Receiving
from utils.embedded_pg import EmbeddedPostgres

config_key = web.AppKey("config", Config)
db_key = web.AppKey("db", asyncpg.Pool)
# The one database health: kept by its watcher (service.database_health) and the writes;
# read by /readyz, the record writer and /metrics.
db_health_key = web.AppKey("db_health", DatabaseHealth)
embedded_pg_key = web.AppKey("embedded_pg", EmbeddedPostgres)  # only when embedded
servers_key = web.AppKey("servers", ModelServers)  # every model's server, by name
warmup_task_key = web.AppKey("warmup_task", asyncio.Task)
records_key = web.AppKey("records", RecordWriter)
events_key = web.AppKey("events", Events)  # event rules, outbox, delivery
renditions_key = web.AppKey("renditions", Renditions)  # sized images (thumbnails)
auth_key = web.AppKey("auth", Auth)  # present only when access control is on
receiving_key = web.AppKey("receiving", Receiving)  # request bodies being read
# Bodies read for callers with no header credentials (DeepStack's api_key in the form).
anonymous_receiving_key = web.AppKey("anonymous_receiving", Receiving)
metrics_key = web.AppKey("metrics", ServiceMetrics)
openapi_key = web.AppKey("openapi", dict)  # the OpenAPI document, read at start-up
# on a sub-app whose own middleware checks access (DeepStack's api_key form field)
checks_own_access_key = web.AppKey("checks_own_access", bool)
