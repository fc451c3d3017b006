"""Hosts and origins (``service.web.origin``): parsing, the default allowlist, the
same-origin rule. The same rules on a real socket: ``test_untrusted_clients.py``."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from service.web.errors import ApiError
from service.web.origin import (
    allowed_hosts,
    check_host,
    check_same_origin,
    default_hosts,
    origin_of,
    split_host,
)


@pytest.mark.parametrize(("value", "parsed"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("Example.COM", ("example.com", None)),
    ("[::1]:8080", ("::1", 8080)), ("[::1]", ("::1", None)), ("host.:80", ("host", 80)),
])
def test_hosts_parse(value: str, parsed: tuple[str, int | None]) -> None:
    assert split_host(value) == parsed


@pytest.mark.parametrize("value", ["", "[", "[::1", "::1", "x:abc", "a b", "a@b", "x:99999",
                                   "[zz]", "a/b", "\u00e9.example"])
def test_malformed_hosts_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        split_host(value)


@pytest.mark.parametrize("value", ["null", "http://[", "http://x:99999", "file://x",
                                   "javascript:x", "http://a@b", "http://"])
def test_malformed_and_opaque_origins_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        origin_of(value)


def test_the_default_allowlist_is_what_the_service_was_started_for() -> None:
    assert default_hosts("127.0.0.1") == {"localhost", "127.0.0.1", "::1"}
    assert default_hosts("detect.example.org") >= {"detect.example.org", "localhost"}
    assert "evil.example" not in default_hosts("0.0.0.0")
    assert allowed_hosts(("a.example",), "0.0.0.0") == {"a.example"}
    check_host("LOCALHOST:8080", default_hosts("127.0.0.1"))
    for value, status in (("evil.example", 421), (None, 400), ("[", 400)):
        with pytest.raises(ApiError) as refused:
            check_host(value, default_hosts("127.0.0.1"))
        assert refused.value.status == status
    check_host("anything.example", frozenset({"*"}))


def headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


@pytest.mark.parametrize(("method", "given", "host", "refused"), [
    ("GET", {"Origin": "http://evil.example"}, "a:1", False),
    ("POST", {}, "a:1", False),  # curl, scripts
    ("POST", {"Origin": "http://a:1"}, "a:1", False),
    ("POST", {"Origin": "https://a"}, "a", False),  # a TLS-terminating proxy
    ("POST", {"Origin": "http://[::1]:8080"}, "[::1]:8080", False),
    ("POST", {"Origin": "http://a:2"}, "a:1", True),  # another port: another origin
    ("POST", {"Origin": "http://evil.example"}, "a:1", True),
    ("POST", {"Origin": "null"}, "a:1", True),
    ("POST", {"Origin": "http://["}, "a:1", True),
    ("POST", {"Sec_Fetch_Site": "cross-site"}, "a:1", True),
    ("POST", {"Sec_Fetch_Site": "same-site"}, "a:1", True),
    ("POST", {"Sec_Fetch_Site": "same-origin"}, "a:1", False),
    ("POST", {"Origin": "http://evil.example", "Authorization": "Bearer x"}, "a:1", False),
])
def test_the_same_origin_rule(method: str, given: dict[str, str], host: str,
                              refused: bool) -> None:
    if refused:
        with pytest.raises(ApiError) as error:
            check_same_origin(method, headers(**given), host)
        assert error.value.status == 403 and error.value.code == "cross_origin"
    else:
        check_same_origin(method, headers(**given), host)

