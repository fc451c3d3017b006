"""A cap on open connections (``server.max_connections``).

aiohttp accepts every connection it is offered; each holds a socket, buffers and a task,
and the idle timeout only closes them after ``server.idle_timeout``. :func:`listen` serves
the runner's app on a listening socket, and a connection that arrives while
``max_connections`` are open gets a short ``503`` (JSON, ``Retry-After``,
``Connection: close``) and is closed at once: it never reaches the app. The first refusal
after a time below the cap logs one warning line, and the count of refusals since is
logged when the service is below the cap again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from aiohttp import web

log = logging.getLogger(__name__)

_BODY = json.dumps({"error": {"code": "too_many_connections",
                              "message": "the service has too many open connections; "
                                         "try again shortly"}}).encode()
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
           b"Retry-After: 1\r\nConnection: close\r\n"
           + f"Content-Length: {len(_BODY)}\r\n\r\n".encode() + _BODY)


class _Refuse(asyncio.Protocol):
    """Answer 503 and close, reading nothing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(REFUSAL)
        transport.close()


class ConnectionCap:
    """The protocol factory of a capped listener (the runner's server within the cap)."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server = server
        self.limit = limit
        self.refused_total = 0
        self._refusing = 0  # refusals since the cap was last reached

    def __call__(self) -> asyncio.Protocol:
        open_now = len(self.server.connections)
        if open_now >= self.limit:
            if self._refusing == 0:
                log.warning("connection limit reached: %d connections open "
                            "(server.max_connections); new connections get 503 until some "
                            "close", open_now)
            self._refusing += 1
            self.refused_total += 1
            return _Refuse()
        if self._refusing:
            log.warning("below the connection limit again; %d connection(s) were refused",
                        self._refusing)
            self._refusing = 0
        return self.server()


async def listen(runner: web.AppRunner, sock: socket.socket, limit: int) -> asyncio.Server:
    """Serve ``runner``'s app (set up) on ``sock`` with at most ``limit`` connections open.
    Close the returned server before ``runner.cleanup()``."""
    server = runner.server
    if server is None:
        raise RuntimeError("the runner is not set up")
    return await asyncio.get_running_loop().create_server(ConnectionCap(server, limit), sock=sock)
