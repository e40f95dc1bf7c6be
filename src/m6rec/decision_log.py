"""The append-only record of promotion decisions, and the rule it enables: a registry once used must still be there.

``register.decision_log`` (``reports/promotions.jsonl``) gets one JSON line per decision of the register stage. It
is not a DVC output, so DVC never removes it before a stage runs (it does remove ``reports/promotion.json``), and it
survives a failed run.

Why a record rather than a flag passed on first run: a fresh clone has no record, so its first ``make run`` starts
a registry without any flag; once a champion has been promoted in a store, the record says that store must hold
that registered model, so a deleted ``mlflow.db`` or a server pointed at an empty database is an error (never a
silent first run that crowns whatever comes first). ``register.init_registry: true`` starts a new registry
knowingly where a record says one existed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from m6rec import registry, tracking
from m6rec.config import RegisterParams, TrackingParams

log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """The registry a decision record says exists is missing or empty."""


def append(path: str | Path, entry: Mapping[str, Any]) -> Path:
    """Append ``entry`` (with a UTC timestamp) as one JSON line to the decision log at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **entry}, default=str)
    with path.open("a", encoding="utf-8") as fh:  # one write per line: concurrent appends do not interleave
        fh.write(line + "\n")
    return path


def last_promotion(path: str | Path, store: str, model_name: str) -> dict[str, Any] | None:
    """The latest logged decision that left a champion of ``model_name`` in ``store`` (None: no such record)."""
    path = Path(path)
    if not path.is_file():
        return None
    found = None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON: skipped", path, n)
            continue
        if entry.get("store") == store and entry.get("model_name") == model_name and entry.get("champion_after"):
            found = entry
    return found


def check_registry(cfg: RegisterParams, settings: TrackingParams) -> str:
    """Fail fast unless the register stage can use its store; returns the store URI.

    Always: the store answers (:func:`m6rec.tracking.check_store`). Where the decision log records a champion in
    this store, the store must exist and hold ``cfg.model_name``, unless ``cfg.init_registry``.
    """
    uri = tracking.tracking_uri(settings)
    record = last_promotion(cfg.decision_log, uri, cfg.model_name)
    if record is None or cfg.init_registry:
        tracking.check_store(settings)
        if record is not None:
            log.warning("register.init_registry is true: starting a new registry in %s although %s records "
                        "champion v%s there (%s)", uri, cfg.decision_log, record["champion_after"], record["time"])
        return uri
    why = (f"{cfg.decision_log} records champion v{record['champion_after']} of '{cfg.model_name}' promoted there "
           f"at {record.get('time')}")
    try:
        tracking.check_store(settings, must_exist=True)
    except tracking.StoreError as exc:
        raise RegistryError(f"{exc}, but {why}; refusing to start an empty registry (restore the store, or set "
                            f"register.init_registry: true to start a new one)") from exc
    if not registry.registered_model_exists(cfg.model_name, settings=settings):
        raise RegistryError(f"MLflow store {uri} has no registered model '{cfg.model_name}', but {why}; refusing "
                            f"to treat it as a first run (set register.init_registry: true to start a new one)")
    return uri
