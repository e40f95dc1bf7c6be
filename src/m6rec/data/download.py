"""Get raw datasets into `<raw_dir>/<name>/`: the official source, else the local mirror (sha256-checked); a
registry entry with `path` (a local source: the user's own data) is copied from that folder instead."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from m6rec.config import ConfigError, DataParams
from m6rec.data.sources import OFFLINE_ENV, DataSourceError, default_mirror, fetch_dataset, load_registry

log = logging.getLogger(__name__)


def download(cfg: DataParams, mirror: Path | None = None, offline: bool = False) -> list[str]:
    """Fetch every dataset `cfg` names (all registered ones if none); returns the names that could not be got.

    `mirror` defaults to $M6REC_DATA_MIRROR or ../shared/data; `offline` (or $M6REC_OFFLINE=1) skips the
    official sources.
    """
    registry = load_registry(cfg.registry)
    names = list(cfg.datasets) or list(registry)
    unknown = sorted(set(names) - set(registry))
    if unknown:
        raise ConfigError(f"data.datasets names unknown datasets {unknown}; registered in {cfg.registry}: "
                          f"{sorted(registry)}")
    offline = offline or os.environ.get(OFFLINE_ENV, "") not in ("", "0")
    mirror = mirror or default_mirror()
    failures = []
    for name in names:
        try:
            fetch_dataset(registry[name], Path(cfg.raw_dir), mirror, offline=offline, timeout=cfg.timeout_s)
        except DataSourceError as exc:
            log.error("%s", exc)
            failures.append(name)
    if failures:
        log.error("could not obtain: %s", ", ".join(failures))
    else:
        log.info("raw data ready in %s (%d datasets)", cfg.raw_dir, len(names))
    return failures
