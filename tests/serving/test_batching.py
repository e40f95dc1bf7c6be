"""MicroBatcher: concurrent submissions share batches and every caller gets its own answer."""

from __future__ import annotations

import asyncio
import time

import pytest

from m6rec.serving.batching import MicroBatcher


def test_concurrent_queries_are_batched_and_answers_stay_in_their_slot():
    seen_batches: list[list[int]] = []

    def square_slowly(queries):
        seen_batches.append(list(queries))
        time.sleep(0.02)  # like torch, releases the GIL: the loop keeps queueing meanwhile
        return [q * q if q >= 0 else ValueError(f"negative {q}") for q in queries]

    async def run():
        batcher = MicroBatcher(square_slowly, max_batch=8)
        answers = await asyncio.gather(*(batcher.submit(q) for q in [*range(30), -1]))
        return batcher, answers

    batcher, answers = asyncio.run(run())
    assert answers[:30] == [q * q for q in range(30)]
    assert isinstance(answers[30], ValueError)  # returned, not raised: one bad query does not fail others
    assert batcher.queries == 31 and batcher.batches == len(seen_batches) < 31
    assert max(len(b) for b in seen_batches) == 8  # capped at max_batch
    assert sorted(q for b in seen_batches for q in b) == sorted([*range(30), -1])


def test_lone_query_is_not_delayed():
    async def run():
        batcher = MicroBatcher(lambda qs: [q + 1 for q in qs])
        t0 = time.perf_counter()
        out = await batcher.submit(1)
        return out, time.perf_counter() - t0, batcher.batches

    out, elapsed, batches = asyncio.run(run())
    assert (out, batches) == (2, 1) and elapsed < 1.0


def test_a_crashing_batch_fails_its_callers_only():
    def flaky(queries):
        if 0 in queries:
            raise RuntimeError("boom")
        return list(queries)

    async def run():
        batcher = MicroBatcher(flaky, max_batch=1)
        bad = batcher.submit(0)
        good = batcher.submit(5)
        return await asyncio.gather(bad, good, return_exceptions=True)

    bad, good = asyncio.run(run())
    assert isinstance(bad, RuntimeError) and good == 5
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(flaky, max_batch=0)
