"""The request-timeout middleware that replaces BentoML's: same answers, and no timer left behind per request."""

from __future__ import annotations

import asyncio
import gc

from m6rec.serving import timeout
from m6rec.serving.timeout import CancellingTimeoutMiddleware


def _app(delay_before: float, delay_after: float = 0.0):
    async def app(scope, receive, send):
        await asyncio.sleep(delay_before)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(delay_after)
        await send({"type": "http.response.body", "body": b"ok"})
    return app


async def _call(app, timeout_s: float, middleware: type = CancellingTimeoutMiddleware) -> list[dict]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    await middleware(app, timeout_s)({"type": "http", "path": "/x"}, receive, send)
    return sent


def _armed_timers(loop: asyncio.AbstractEventLoop) -> int:
    """Timers still armed more than 10 s ahead (each one keeps a finished request's objects alive)."""
    return sum(1 for o in gc.get_objects()
               if isinstance(o, asyncio.TimerHandle) and not o.cancelled() and o.when() - loop.time() > 10)


def _armed_after_requests(middleware: type, n: int = 200) -> int:
    async def many():
        loop = asyncio.get_running_loop()
        before = _armed_timers(loop)
        for _ in range(n):
            sent = await _call(_app(0.0), 30.0, middleware)
            assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        return _armed_timers(loop) - before

    return asyncio.run(many())


def test_fast_requests_leave_no_timer_armed():
    assert _armed_after_requests(CancellingTimeoutMiddleware) == 0


def test_bentoml_own_middleware_still_leaks_its_timers():
    """Why the replacement exists; if this fails, BentoML fixed it and m6rec.serving.timeout can go."""
    import importlib

    traffic = importlib.reload(importlib.import_module("bentoml._internal.server.http.traffic"))
    try:
        assert _armed_after_requests(traffic.TimeoutMiddleware, 50) == 50
    finally:
        timeout.install()


def test_slow_start_is_a_504_and_a_started_response_completes():
    sent = asyncio.run(_call(_app(0.5), 0.05))
    assert sent[0]["status"] == 504 and b"Not able to process the request in 0.05 seconds" in sent[1]["body"]
    sent = asyncio.run(_call(_app(0.0, delay_after=0.2), 0.05))  # started in time: not cut off
    assert sent[0]["status"] == 200 and sent[-1]["body"] == b"ok"


def test_an_app_that_sends_nothing_does_not_wait_for_the_timeout():
    async def silent(scope, receive, send):
        return None

    async def timed():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sent = await _call(silent, 5.0)
        return sent, loop.time() - t0

    sent, elapsed = asyncio.run(timed())
    assert sent == [] and elapsed < 1.0


def test_service_module_installs_it():
    from bentoml._internal.server.http import traffic

    import m6rec.serving.service  # noqa: F401  (installs at import)

    assert traffic.TimeoutMiddleware is CancellingTimeoutMiddleware
