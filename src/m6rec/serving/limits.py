"""What a request body must be before BentoML parses it, and how client errors are logged.

:class:`RequestGuard` is an ASGI middleware in front of every endpoint (installed by the service module):

- **size**: a body over ``serve.max_body_bytes`` is answered 413 without being read: at once from its
  ``Content-Length``, or, for a chunked body, as soon as the bytes received pass the limit. Without it a 50 MB body
  of ids held the worker for 12 s and grew it by 1.3 GB.
- **type**: a body must be JSON (``application/json`` or ``application/*+json``, UTF-8; no content type at all is
  taken as JSON, as BentoML does). Anything else is 415 naming what is accepted, instead of being parsed as JSON
  anyway (or, for ``multipart/form-data`` without a boundary, a 500).
- **strict JSON**: duplicate object keys (400 naming the key; Python's and pydantic's parsers both let the last
  one win) and the non-standard ``NaN``/``Infinity`` constants (400) are rejected. Syntax errors are left to
  pydantic, whose 400 says where.
- **OpenAPI**: ``GET /docs.json`` answers the service's own document (``m6rec.serving.openapi``), which states the
  limits above and the error responses, instead of BentoML's, which loses nullable fields and declares error
  bodies the server never sends.

:func:`install_error_logging` makes BentoML log a client's schema error (pydantic's 400) as one INFO line
(endpoint, status, fields) instead of an ERROR with a full traceback (35 MB of log for 17k fuzzed requests);
a server error keeps its ERROR and traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ACCEPTED_TYPES = ("application/json", "application/*+json")
_BODY_METHODS = {"POST", "PUT", "PATCH"}


class BodyError(Exception):
    """A body refused before the endpoint sees it: ``status``, the message, and the field at fault if any."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def check_content_type(value: str | None) -> None:
    """Raise :class:`BodyError` 415 unless ``value`` (a Content-Type header, or None) names UTF-8 JSON."""
    if value is None or not value.strip():
        return  # BentoML reads a body without a type as JSON; so do curl scripts that forget the header
    media, *params = (part.strip() for part in value.split(";"))
    media = media.lower()
    if not (media == "application/json" or (media.startswith("application/") and media.endswith("+json"))):
        raise BodyError(415, f"content-type {value!r} is not supported; send JSON "
                             f"({' or '.join(ACCEPTED_TYPES)}, UTF-8)", "content-type")
    for param in params:
        name, _, arg = param.partition("=")
        if name.strip().lower() == "charset" and arg.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise BodyError(415, f"charset {arg.strip()!r} is not supported; send UTF-8 JSON "
                                 f"({' or '.join(ACCEPTED_TYPES)})", "content-type")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BodyError(400, f"{key}: duplicate key in a JSON object (each field may appear once)", key)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise BodyError(400, f"{name} is not valid JSON (numbers must be finite)", None)


def check_json(body: bytes) -> None:
    """Raise :class:`BodyError` 400 for a duplicate key, NaN/Infinity or a number too long to read.

    Anything else that does not parse (bad syntax, bad UTF-8, an empty body) is left to pydantic, whose 400 says
    where; what does parse is parsed again by pydantic, which costs microseconds on bodies this small.
    """
    try:
        json.loads(body, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except BodyError:
        raise
    except json.JSONDecodeError:
        return
    except UnicodeDecodeError:
        return
    except ValueError as exc:  # int() refuses numbers of more than sys.get_int_max_str_digits() digits
        raise BodyError(400, f"unreadable number in JSON body: {exc}", None) from exc
    except RecursionError as exc:
        raise BodyError(400, "JSON body nested too deeply", None) from exc


async def send_error(send: Send, status: int, message: str, field: str | None = None,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``{"error": message, "field": field}`` with ``status`` (the service's client-error shape)."""
    body = json.dumps({"error": message, "field": field}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def log_client_error(path: str, status: int, message: str, fields: list[str] | None = None) -> None:
    """The one INFO line a client mistake is worth: endpoint, status, fields at fault, message."""
    log.info("client error %s %d fields=%s: %s", path, status, ",".join(fields or []) or "-", message)


class RequestGuard:
    """ASGI middleware: size, type and strict-JSON checks on request bodies; serves ``/docs.json``."""

    def __init__(self, app: Any, max_body_bytes: int | Callable[[], int],
                 openapi: Callable[[], dict[str, Any]] | None = None, openapi_path: str = "/docs.json") -> None:
        self.app = app
        # A callable is resolved here, in the worker, after BentoML set up logging and the params were read.
        self.max_body_bytes = max_body_bytes() if callable(max_body_bytes) else int(max_body_bytes)
        if self.max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        self._openapi = openapi
        self._openapi_body: bytes | None = None
        self.openapi_path = openapi_path
        # BentoML sets the root logger to WARNING in its workers: without this the INFO lines above are lost.
        pkg = logging.getLogger(__name__.split(".")[0])
        if pkg.level == logging.NOTSET:
            pkg.setLevel(logging.INFO)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self._openapi is not None and scope["method"] == "GET" and scope["path"] == self.openapi_path:
            return await self._send_openapi(send)
        if scope["method"] not in _BODY_METHODS:
            return await self.app(scope, receive, send)
        try:
            body = await self._read_checked(scope, receive)
        except BodyError as exc:
            log_client_error(scope["path"], exc.status, str(exc), [exc.field] if exc.field else None)
            # A refused body may be left unread: ask the client to close rather than reuse a half-read connection.
            return await send_error(send, exc.status, str(exc), exc.field, [(b"connection", b"close")]
                                    if exc.status == 413 else None)
        return await self.app(scope, _replay(body, receive), send)

    async def _read_checked(self, scope: Scope, receive: Receive) -> bytes:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        check_content_type(headers.get("content-type"))
        limit = self.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise BodyError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes "
                                 f"(serve.max_body_bytes)", None)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyError(413, f"request body over the limit of {limit} bytes (serve.max_body_bytes)", None)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        check_json(body)
        return body

    async def _send_openapi(self, send: Send) -> None:
        if self._openapi_body is None:  # built once per worker, on first request
            self._openapi_body = json.dumps(self._openapi()).encode()  # type: ignore[misc]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(self._openapi_body)).encode())]})
        await send({"type": "http.response.body", "body": self._openapi_body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then whatever the client sends next (disconnect)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _client_status(exc: BaseException | None) -> int | None:
    """The 4xx status BentoML answers ``exc`` with, or None for a server error."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return 400
    code = getattr(getattr(exc, "error_code", None), "value", None)
    if isinstance(code, int) and 400 <= code < 500:
        return code
    return None


def install_error_logging() -> bool:
    """Make BentoML log client errors as one INFO line, server errors as before; True if it could."""
    try:
        from _bentoml_impl.server import app as bento_app
    except ImportError:
        log.warning("_bentoml_impl.server.app not found: BentoML logs client errors with tracebacks")
        return False
    original = getattr(bento_app.log_exception, "__wrapped__", bento_app.log_exception)

    def log_exception(request: Any, exc_info: Any = True) -> None:
        exc = sys.exc_info()[1]
        status = _client_status(exc)
        if status is None:
            return original(request, exc_info)
        errors = getattr(exc, "errors", None)
        fields = ([".".join(str(x) for x in e["loc"]) or "body" for e in errors(include_context=False)]
                  if callable(errors) else [])
        log_client_error(request.url.path, status, str(exc).splitlines()[0], fields)

    log_exception.__wrapped__ = original  # type: ignore[attr-defined]
    bento_app.log_exception = log_exception
    return True
