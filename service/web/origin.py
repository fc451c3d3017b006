"""Hosts and origins: which ``Host`` a request may name, and which POSTs come from this site.

- **Host allowlist** (DNS rebinding): a request whose ``Host`` is not one of
  ``server.allowed_hosts`` gets 421 ``misdirected_request``; a malformed or missing one
  400 ``bad_host``. The default (the setting empty) is the hosts the service was started
  for: ``server.host`` itself unless it is a wildcard (``0.0.0.0``, ``::``), then this
  machine's name and addresses; loopback names always. ``*`` allows any host.
- **Same origin** (CSRF): a POST (any unsafe method) that a browser sent from another
  origin is refused with 403 ``cross_origin``, on every route, access control on or off.
  A browser says where a request came from with ``Origin`` (its host and port must be the
  ``Host`` the request was sent to; the scheme is not compared: a TLS-terminating proxy
  changes it) or, without one, ``Sec-Fetch-Site`` (``same-origin`` or ``none`` only).
  A request with neither is not one another site's page can make a browser send (curl, a
  script). A request carrying ``Authorization`` is not judged: a page of another origin
  cannot add that header without a CORS preflight, which this service never grants.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping

from yarl import URL

from service.web.errors import ApiError

ANY_HOST = "*"
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
SAME_SITE_FETCH = frozenset({"same-origin", "none"})
_HOST = re.compile(r"(?:(?P<name>[A-Za-z0-9_.-]+)|\[(?P<v6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?")


def split_host(value: str) -> tuple[str, int | None]:
    """``host[:port]`` (``[v6]:port`` for IPv6) -> (lower-case host, port or None);
    ValueError if malformed."""
    match = _HOST.fullmatch(value)
    if match is None:
        raise ValueError(f"malformed host {value[:100]!r}")
    host = (match["name"] or match["v6"]).lower()
    if match["v6"] is not None:
        ipaddress.IPv6Address(host)  # ValueError if not an IPv6 address
    port = None if match["port"] is None else int(match["port"])
    if port is not None and port > 65535:
        raise ValueError(f"port out of range in {value[:100]!r}")
    return host.rstrip(".") or host, port


def origin_of(value: str) -> tuple[str, int | None]:
    """An ``Origin`` header -> (host, port or None); ValueError if malformed or opaque."""
    if value == "null":
        raise ValueError("an opaque origin (null)")
    url = URL(value)
    if url.scheme not in ("http", "https") or not url.raw_authority:
        raise ValueError(f"not an http(s) origin: {value[:100]!r}")
    return split_host(url.raw_authority)


def default_hosts(bind_host: str) -> frozenset[str]:
    """The hosts the service was started for: loopback, and ``bind_host`` or (for a
    wildcard) this machine's names and addresses."""
    hosts = set(LOOPBACK)
    if bind_host.strip().lower() not in WILDCARDS:
        hosts.add(bind_host.strip().lower().strip("[]"))
        return frozenset(hosts)
    names = {socket.gethostname(), socket.getfqdn()}
    hosts.update(name.lower() for name in names if name)
    for name in names:
        try:
            infos = socket.getaddrinfo(name, None)
        except OSError:
            continue
        hosts.update(str(info[4][0]).split("%", 1)[0].lower() for info in infos)
    return frozenset(hosts)


def allowed_hosts(configured: Iterable[str], bind_host: str) -> frozenset[str]:
    """``server.allowed_hosts``, else :func:`default_hosts`."""
    hosts = frozenset(configured)
    return hosts if hosts else default_hosts(bind_host)


def check_host(value: str | None, allowed: frozenset[str]) -> None:
    """400 for a missing or malformed ``Host``, 421 for one not allowed."""
    if value is None:
        raise ApiError(400, "bad_host", "the request has no Host header")
    try:
        host, _ = split_host(value)
    except ValueError:
        raise ApiError(400, "bad_host", f"malformed Host header: {value[:100]!r}") from None
    if ANY_HOST not in allowed and host not in allowed:
        raise ApiError(421, "misdirected_request",
                       f"this service does not answer for host {host[:100]!r}")


def check_same_origin(method: str, headers: Mapping[str, str],
                      request_host: str | None) -> None:
    """403 ``cross_origin`` for an unsafe request a browser sent from another origin
    (``headers``: the request's, case-insensitive)."""
    if method in SAFE_METHODS or "Authorization" in headers:
        return
    origin = headers.get("Origin")
    if origin is not None:
        try:
            source = origin_of(origin)
            target = split_host(request_host or "")
        except ValueError:
            raise ApiError(403, "cross_origin",
                           f"a request from origin {origin[:100]!r} is not accepted") from None
        if source != target:
            raise ApiError(403, "cross_origin", f"a request from {origin[:100]} cannot change "
                                                "anything on this service")
        return
    if headers.get("Sec-Fetch-Site", "none") not in SAME_SITE_FETCH:
        raise ApiError(403, "cross_origin",
                       "a request from another site cannot change anything on this service")
