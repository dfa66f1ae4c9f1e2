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


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
