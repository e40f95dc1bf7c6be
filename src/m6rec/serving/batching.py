"""Opportunistic micro-batching of ``recommend`` requests inside one service worker.

Requests queue on the event loop; a single drain task hands *everything queued so far* (up to ``max_batch``) to
``fn`` in a worker thread and, while that batch computes (torch releases the GIL), the loop keeps accepting and
parsing requests, which form the next batch. Nothing waits for a batch to fill: at low load each request is a batch
of one, at high load batches grow by themselves. ``fn`` maps a list of queries to a list of answers of the same
length (an answer may be an exception object, which is returned, not raised).

Why not BentoML's adaptive batching: it batches only HTTP endpoints whose body is a list, or calls into a separate
dependency service. That extra hop would cost about one more request's worth of framework time (estimated from the
1-2 ms of server CPU per request measured with bench/bench_serving.py; the variant itself was not built), as much
as batching saves on the scoring (0.5-1 ms per request on a 41k-item catalogue).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import anyio.to_thread

Q = TypeVar("Q")


class MicroBatcher(Generic[Q]):
    """``await batcher.submit(query)`` -> ``fn([..., query, ...])[its slot]``."""

    def __init__(self, fn: Callable[[Sequence[Q]], Sequence[Any]], max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.fn = fn
        self.max_batch = max_batch
        self._queue: list[tuple[Q, asyncio.Future]] = []
        self._draining = False
        self.batches = 0
        self.queries = 0

    async def submit(self, query: Q) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((query, future))
        if not self._draining:
            self._draining = True
            asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
                try:
                    answers = await anyio.to_thread.run_sync(self.fn, [q for q, _ in batch])
                    if len(answers) != len(batch):
                        raise RuntimeError(f"batch function returned {len(answers)} answers for {len(batch)}")
                except Exception as exc:  # a bug, not a client error: fail every request of the batch
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.batches += 1
                self.queries += len(batch)
                for (_, fut), answer in zip(batch, answers, strict=True):
                    if not fut.done():
                        fut.set_result(answer)
        finally:
            self._draining = False
