"""The event loop the server runs on (``server.event_loop``): asyncio's own (the
default: the one the test suite runs on), or uvloop's (libuv) when asked for or, with
``auto``, when it is installed. A leaf helper: imports nothing from the project."""

from __future__ import annotations

import asyncio
import importlib.util
import logging

log = logging.getLogger(__name__)

EVENT_LOOPS = ("auto", "asyncio", "uvloop")


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """A new loop of the kind ``choice`` (one of :data:`EVENT_LOOPS`) names."""
    if choice not in EVENT_LOOPS:
        raise ValueError(f"unknown event loop {choice!r}: one of {', '.join(EVENT_LOOPS)}")
    if choice == "uvloop" or (choice == "auto" and uvloop_available()):
        import uvloop

        log.info("event loop: uvloop %s", uvloop.__version__)
        return uvloop.new_event_loop()
    log.info("event loop: asyncio")
    return asyncio.new_event_loop()
