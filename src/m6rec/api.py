"""The in-process Python API: load a serving bundle (a folder or an MLflow model URI) and ask it for items.

    import m6rec
    model = m6rec.load("models/finetune/bundle")          # or "models:/m6rec@champion"
    model.recommend("ml-100k", "1", k=5)                  # [{"item": ..., "title": ..., "score": ...}] best first
    model.recommend_items("ml-100k", ["50", "172"], k=5)  # an anonymous user from item ids (and/or text=...)
    model.similar_items("ml-100k", "50", k=5)

The scoring is the service's own (:class:`m6rec.serving.recommender.Recommender` over the bundle loaded by
:func:`m6rec.serving.loader.load_served_model`, registry versions verified against their content hash), so what
this returns is what the HTTP service answers. Bad input raises :class:`m6rec.serving.recommender.RequestError`,
which names the field (an unknown domain, item or user, a bad ``k``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Row = dict[str, Any]  # {"item": str, "title": str, "score": float}


def rows(answer: Mapping[str, Any]) -> list[Row]:
    """The ranked items of a Recommender answer (``items``: ``[{item, title, score}]``, best first), as plain types."""
    return [{"item": str(r["item"]), "title": str(r.get("title", "")), "score": float(r["score"])}
            for r in answer.get("items") or []]


class Model:
    """A loaded bundle: ``recommend``, ``recommend_items``, ``similar_items`` and ``explain`` in-process."""

    def __init__(self, recommender: Any, source: str, version: str | None = None) -> None:
        self.recommender = recommender
        self.source = source
        self.version = version

    @property
    def domains(self) -> list[str]:
        return sorted(self.recommender.domains)

    def recommend(self, domain: str, user: str, k: int = 10, exclude_seen: bool = True) -> list[Row]:
        """Top-``k`` items for a known user (the most popular ones for a user the model does not know)."""
        return rows(self.recommender.recommend(domain, str(user), k, exclude_seen))

    def recommend_items(self, domain: str, items: Sequence[str] = (), k: int = 10, text: str | None = None
                        ) -> list[Row]:
        """Top-``k`` items for an anonymous user given the item ids they liked (oldest first) and/or free text."""
        return rows(self.recommender.recommend_items(domain, [str(i) for i in items], text, k))

    def similar_items(self, domain: str, item: str, k: int = 10) -> list[Row]:
        """The ``k`` items whose vectors are closest (cosine) to ``item``'s."""
        return rows(self.recommender.similar_items(domain, str(item), k))

    def explain(self, domain: str, user: str, item: str, n: int | None = None) -> dict[str, Any]:
        """Why ``item`` for ``user``: the score and the history items that support it most (the service's answer)."""
        return self.recommender.explain(domain, str(user), str(item), n)

    def metadata(self) -> dict[str, Any]:
        return self.recommender.metadata()

    def __repr__(self) -> str:
        return f"m6rec.Model(source={self.source!r}, version={self.version!r}, domains={self.domains})"


def is_model_uri(target: str) -> bool:
    """An MLflow model URI (``models:/...``, ``runs:/...``, ``s3://...``) rather than a bundle folder."""
    return target.startswith(("models:/", "runs:/")) or "://" in target


def load(path_or_uri: str | Path, max_k: int = 1000, params: str | Path | None = None) -> Model:
    """A :class:`Model` from a bundle folder or an MLflow model URI (``models:/m6rec@champion``, ``runs:/...``).

    A URI is read from the MLflow store of ``MLFLOW_TRACKING_URI``, else the ``tracking`` section of ``params``
    (default ``params.yaml`` when present, i.e. the project's ``mlflow.db``).
    """
    from m6rec.config import TrackingParams, load_params, section
    from m6rec.serving.loader import ServeParams, load_served_model
    from m6rec.serving.recommender import Recommender

    target = str(path_or_uri)
    is_uri = is_model_uri(target)
    cfg = ServeParams(model_uri=target, max_k=max_k) if is_uri else ServeParams(bundle_dir=target, max_k=max_k)
    store = TrackingParams()
    params_file = Path(params or "params.yaml")
    if params_file.is_file():
        loaded = load_params(params_file)
        if "tracking" in loaded:
            store = section(loaded, "tracking", TrackingParams)
    elif params is not None:
        raise FileNotFoundError(f"params file not found: {params_file}")
    if not is_uri and not (Path(target) / "bundle.json").is_file():
        raise FileNotFoundError(f"{target}: not a serving bundle folder (no bundle.json) and not a model URI "
                                f"such as models:/m6rec@champion")
    served = load_served_model(cfg, store)
    rec = Recommender(served.bundle, max_k=max_k, version=served.version, source=served.source)
    return Model(rec, served.source, served.version)
