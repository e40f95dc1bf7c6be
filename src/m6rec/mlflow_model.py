"""A serving bundle as an MLflow pyfunc model: ``mlflow.pyfunc.load_model("models:/m6rec@champion")`` recommends.

The model's one artifact is the bundle folder (``artifacts["bundle"]``); :class:`BundleRecommender` loads it with
:func:`m6rec.serving.bundle_io.load_bundle` and answers through :class:`m6rec.serving.recommender.Recommender`, the
code the BentoML service runs, so the pyfunc scores exactly as the service does (no scoring here).

``predict`` takes a DataFrame, one request per row:

============  ========  =========================================================================================
column        type      meaning
============  ========  =========================================================================================
``domain``    str       a domain of the bundle
``user``      str       a raw user id (an unknown one gets the most popular items, as the service does)
``k``         int       how many items (1 .. :data:`MAX_K`)
``items``     list[str] optional: an anonymous user's history (item ids, oldest first); when given and non-empty
                        the row is answered from it (``recommend_items``) and ``user`` is only echoed back
============  ========  =========================================================================================

and returns one row per recommended item: ``domain``, ``user``, ``item``, ``title``, ``score``, ``rank`` (1 = best),
rows of a request in rank order, requests in input order. A bad request raises an ``MlflowException`` with
``INVALID_PARAMETER_VALUE`` (HTTP 400 from ``mlflow models serve``) naming the row and field.

The model is logged *from code* (``mlflow_model_code.py`` beside this file, which calls
``mlflow.models.set_model``), so nothing is pickled, and with ``code_paths`` holding the ``m6rec`` package, so it
loads in a fresh process without the project on ``sys.path``. :mod:`m6rec.registry` logs it
(``log_bundle_model``, with the signature and an input example) by file path, without importing this module: the
stages' DVC outputs do not depend on the serving code, only the logged MLflow model does. This module and
:mod:`m6rec.tracking` (with :mod:`m6rec.registry` on top of it) are the only ones that import mlflow.
"""

from __future__ import annotations

import math
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

ARTIFACT = "bundle"  # key of the bundle folder in the model's artifacts (= m6rec.registry.MODEL_BUNDLE_ARTIFACT)
MAX_K = 100  # largest k a row may ask for (the service's default serve.max_k)
# The output columns; the signature m6rec.tracking logs declares the same (tests/unit/test_mlflow_model.py checks).
OUTPUT_COLUMNS = ["domain", "user", "item", "title", "score", "rank"]


def _bad(row: int, message: str) -> MlflowException:
    return MlflowException(f"row {row}: {message}", error_code=INVALID_PARAMETER_VALUE)


def _history(value: Any) -> list[str]:
    """The optional ``items`` cell as a list of ids (missing, None or NaN: empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        raise TypeError("items must be a list of item ids, not a string")
    return [str(v) for v in value]


class BundleRecommender(mlflow.pyfunc.PythonModel):
    """Recommendations from a serving bundle (see the module docstring for input and output)."""

    def load_context(self, context) -> None:
        from m6rec.serving.bundle_io import load_bundle
        from m6rec.serving.recommender import Recommender

        self.recommender = Recommender(load_bundle(context.artifacts[ARTIFACT]), max_k=MAX_K)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from m6rec.serving.recommender import RecommendQuery, RequestError

        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        missing = [c for c in ("domain", "user", "k") if c not in model_input.columns]
        if missing:
            raise MlflowException(f"input lacks column(s) {missing}; expected domain, user, k (and optionally "
                                  f"items)", error_code=INVALID_PARAMETER_VALUE)
        rows = model_input.to_dict("records")
        answers: list[dict[str, Any] | RequestError | None] = [None] * len(rows)
        known: list[int] = []
        for i, row in enumerate(rows):
            try:
                k = row["k"].item() if hasattr(row["k"], "item") else row["k"]  # numpy scalar -> Python
                row["k"] = int(k) if isinstance(k, float) and k.is_integer() else k  # JSON may bring 5.0
                history = _history(row.get("items"))
            except (TypeError, ValueError) as exc:
                raise _bad(i, str(exc)) from exc
            if history:
                try:
                    answers[i] = self.recommender.recommend_items(str(row["domain"]), history, k=row["k"])
                except RequestError as exc:
                    answers[i] = exc
            else:
                known.append(i)
        batch = self.recommender.recommend_batch(
            [RecommendQuery(str(rows[i]["domain"]), str(rows[i]["user"]), rows[i]["k"]) for i in known])
        for i, answer in zip(known, batch, strict=True):
            answers[i] = answer
        out: list[dict[str, Any]] = []
        for i, answer in enumerate(answers):
            if isinstance(answer, RequestError):
                raise _bad(i, str(answer))
            for rank, entry in enumerate(answer["items"], 1):
                out.append({"domain": str(rows[i]["domain"]), "user": str(rows[i]["user"]), "item": entry["item"],
                            "title": entry["title"], "score": float(entry["score"]), "rank": rank})
        return pd.DataFrame(out, columns=OUTPUT_COLUMNS).astype({"score": "float64", "rank": "int64"})
