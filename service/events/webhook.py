"""Webhooks: an event POSTed as JSON, signed as GitHub signs its webhooks.

Headers: ``Content-Type: application/json``, ``Idempotency-Key`` (the record id),
``X-Yolo-Event`` (the rule's name) and, when the rule has a secret,
``X-Signature-256: sha256=<hex HMAC-SHA256 of the body>``. Any 2xx is delivered;
anything else (a redirect included: never followed), a timeout or a connection error is
a failed try.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import aiohttp

from service.events.errors import DeliveryError
from service.events.rules import body_bytes
from settings import EventRule

USER_AGENT = "yolo-detect-events/1"


def signature(body: bytes, secret: str) -> str:
    """The ``X-Signature-256`` value of ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


class WebhookSender:
    """POSTs events with one HTTP client session (opened and closed by the owner)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    async def send(self, rule: EventRule, event: Mapping[str, Any]) -> None:
        """One try within ``rule.timeout``; raises DeliveryError."""
        assert rule.webhook is not None
        body = body_bytes(event)
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "Idempotency-Key": str(event["id"]), "X-Yolo-Event": rule.name}
        if rule.secret is not None:
            headers["X-Signature-256"] = signature(body, rule.secret)
        try:
            async with self.session.post(
                    rule.webhook, data=body, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=rule.timeout)) as response:
                await response.read()
                if not 200 <= response.status < 300:
                    raise DeliveryError(f"HTTP {response.status} from {rule.webhook}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
