"""Stage `preflight`: fail in seconds, before any long stage, when the MLflow store cannot be used.

Checks what the register stage will need (:func:`m6rec.decision_log.check_registry`): the store answers (a tracking
server's ``/health``, a readable sqlite file or one that may be created), and where ``register.decision_log``
records a champion in this store, the store and its registered model are still there (unless
``register.init_registry``). On success it writes ``preflight.out``, whose content is constant: see dvc.yaml for
why the stages that log to MLflow depend on it.
"""

from __future__ import annotations

import json
import logging

from m6rec import decision_log, tracking
from m6rec.config import PreflightParams, RegisterParams, section
from m6rec.stage_io import stage_params, tracking_settings, write_text

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    params = stage_params(argv, __doc__)
    cfg = section(params, "preflight", PreflightParams) if "preflight" in params else PreflightParams()
    register = section(params, "register", RegisterParams) if "register" in params else RegisterParams()
    try:
        uri = decision_log.check_registry(register, tracking_settings(params))
    except (decision_log.RegistryError, tracking.StoreError) as exc:
        log.error("preflight failed, stopping before the long stages: %s", exc)
        return 1
    log.info("preflight passed: MLflow store %s is usable", uri)
    # Constant content (no URI, no time): a new store must not make DVC rerun every model stage.
    write_text(cfg.out, json.dumps({"tracking_store": "usable", "registry": "as recorded"}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
