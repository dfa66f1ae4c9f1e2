"""Writes of concurrent requests made together: one write in flight, the rest queue for the next.

Many writes take the same counter or rollup row, whose lock a transaction holds until its
commit: one transaction per request would queue them on that row one commit at a time, each
with its own round trips. A ``WriteBatcher`` keeps one write in flight per process; what
arrives meanwhile goes together into the next one. Each caller is answered when the write
holding its item committed, so an answer never runs ahead of the ledger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class WriteBatcher(Generic[T, R]):
    """``write(item)`` returns ``write_many``'s result for that item.

    ``write_many`` gets the waiting items in arrival order (at most ``max_batch``) and returns
    one result each, in the same order. When it raises, every caller of that batch gets the
    exception; the next batch is written all the same.
    """

    def __init__(
        self, write_many: Callable[[list[T]], Awaitable[Sequence[R]]], max_batch: int = 500
    ) -> None:
        self.write_many = write_many
        self.max_batch = max_batch
        self.waiting: list[tuple[T, asyncio.Future[R]]] = []
        self.task: asyncio.Task[None] | None = None

    async def write(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.waiting.append((item, future))
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self.waiting:
            batch = self.waiting[: self.max_batch]
            del self.waiting[: self.max_batch]
            try:
                results = await self.write_many([item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # a caller that went away is cancelled
                    future.set_result(result)
