"""Test helper: a real history-attention model trained briefly on real tiny data, and its serving bundle domain.

The model is the multitask stage's own (``build_model`` over PureSVD item vectors, one short epoch of
``train_model``), exported with the stage's ``domain_bundle``: what the service serves is what the stage exports.
``attention_export`` is the model's ``HistoryExport`` for :mod:`m6rec.serving.export` (built here the way the stage
builds its domain until the model exports itself).
"""

from __future__ import annotations

from m6rec.data.dataset import DomainData, Prepared, domain_data
from m6rec.evaluation.protocol import EvaluateParams
from m6rec.models.multitask import MultiTaskRecommender
from m6rec.models.base import HistoryExport
from m6rec.serving.bundle import DomainBundle
from m6rec.serving.export import raw_user_ids
from m6rec.stages.multitask import (MultitaskParams, architecture, build_model, domain_bundle, svd_items, task_weights,
                                    train_config, train_model)

FAST = MultitaskParams(max_len=20, n_interests=2, hidden=16, examples_per_user=5, negatives=64, batch_size=128,
                       epochs=1, valid_users=0)


def attention_model(prepared: Prepared, domain: str, dim: int = 16, seed: int = 0
                    ) -> tuple[MultiTaskRecommender, DomainData]:
    data = domain_data(prepared, domain)
    items = svd_items({domain: data}, dim, seed)
    model = build_model(items, {domain: data}, "attention", task_weights(FAST, True), architecture(FAST), seed)
    model.set_trainable_groups(FAST.train_groups)
    train_model(model, {domain: data}, train_config(FAST), EvaluateParams(), progress=False, name=domain)
    return model, data


def attention_domain(prepared: Prepared, model: MultiTaskRecommender, data: DomainData) -> DomainBundle:
    return domain_bundle(model, data, raw_user_ids(prepared, data.name))


def attention_export(model: MultiTaskRecommender, domain: str) -> HistoryExport:
    """``model.export(domain)``, or the same arrays gathered as the multitask stage's ``domain_bundle`` does."""
    if hasattr(model, "export"):
        return model.export(domain)
    k = model.domain_index(domain)
    enc, table = model.encoder, model.table(k)
    text = None
    if table.text is not None and bool(table.text.abs().sum() > 0):
        text = table.text.float().numpy()
    config = {"dim": enc.dim, "n_interests": int(model.config()["n_interests"]), "max_len": enc.max_len,
              "pooling": enc.pooling, "hidden": enc.hidden}
    return HistoryExport(
        item_vectors=model.catalogue(k).vectors.detach().float().numpy(), config=config,
        weights={n: t.detach().float().numpy().copy() for n, t in enc.state_dict().items()},
        recency=None if table.recency is None else table.recency.detach().float().numpy().copy(),
        item_text_vectors=text)
