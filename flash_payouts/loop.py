"""The event loop the command's coroutines run on: uvloop where it is built for the platform.

uvloop's transports and its event loop written in C answer an HTTP request in markedly less
CPU than asyncio's own; the gateway, the API and the exporter all run on it. Where uvloop is
not available (Windows), asyncio's loop does the same work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new uvloop loop, or asyncio's where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
