"""Whether an MLflow store can be used, told in seconds with the standard library only (no mlflow import).

:mod:`m6rec.tracking` wraps it as ``check_store(settings)``; the ``preflight`` stage, the register stage and the
service call that before any long work, so a dead server or a missing database fails with its URI in one line.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The MLflow store cannot be used: a server that does not answer, a database file that is missing or not one."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other store)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_uri(uri: str, *, must_exist: bool = False, timeout_s: float = 5.0) -> str:
    """Check the store at ``uri``; returns ``uri``, raises :class:`StoreError` naming it and what is wrong.

    A tracking server (``http(s)://``) must answer ``GET /health`` with 200 within ``timeout_s``. A sqlite store must
    be a readable database; a missing file is an error when ``must_exist``, else its folder must exist (mlflow
    creates the file). Other schemes are not checked ahead.
    """
    db = sqlite_path(uri)
    if db is not None:
        if not db.exists():
            if must_exist:
                raise StoreError(f"MLflow store {uri}: database file {db} does not exist")
            if not db.parent.is_dir():
                raise StoreError(f"MLflow store {uri}: folder {db.parent} does not exist")
            return uri
        try:  # read-only: a check must never create or migrate the database
            with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True,
                                                    timeout=timeout_s)) as con:
                con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"MLflow store {uri}: {db} is not a readable sqlite database ({exc})") from exc
        return uri
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (scheme checked above)
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise StoreError(f"MLflow tracking server {uri} is unreachable ({reason}); start it, or point "
                             f"MLFLOW_TRACKING_URI at a live one") from exc
        if status != 200:
            raise StoreError(f"MLflow tracking server {uri} answered {url} with HTTP {status}")
        return uri
    log.info("store %s is not a sqlite file or an http server: not checked ahead", uri)
    return uri
