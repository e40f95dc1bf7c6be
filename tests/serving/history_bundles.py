"""Test helper: a real history-attention model trained briefly on real tiny data, and its serving bundle domain.

The model is the multitask stage's own (:func:`m6rec.training.assembly.build_model` over PureSVD item vectors, one
short epoch of :func:`m6rec.training.history.train_model`), exported through :mod:`m6rec.serving.export`: what the
service serves is what the stage exports. :func:`gathered_export` collects the same arrays by hand from the model's
parts, as an independent reference for the model's own ``export``.
"""

from __future__ import annotations

from m6rec.config import ProtocolParams
from m6rec.data.dataset import DomainData, Prepared, domain_data
from m6rec.model_params import MultitaskParams, TrainParams
from m6rec.models.base import HistoryExport
from m6rec.models.multitask import MultiTaskRecommender
from m6rec.serving.bundle import DomainBundle
from m6rec.serving.export import domain_bundle, raw_user_ids
from m6rec.training.assembly import architecture, build_model, task_weights
from m6rec.training.history import train_model
from tests.pretrained_fixtures import svd_items

FAST = MultitaskParams(max_len=20, n_interests=2, hidden=16,
                       train=TrainParams(examples_per_user=5, negatives=64, batch_size=128, epochs=1, valid_users=0))


def attention_model(prepared: Prepared, domain: str, dim: int = 16, seed: int = 0
                    ) -> tuple[MultiTaskRecommender, DomainData]:
    data = domain_data(prepared, domain)
    items = svd_items({domain: data}, dim, seed)
    model = build_model(items, {domain: data}, "attention", task_weights(FAST, True), architecture(FAST), seed)
    model.set_trainable_groups(FAST.train_groups)
    train_model(model, {domain: data}, FAST.train, ProtocolParams(), progress=False, name=domain)
    return model, data


def attention_domain(prepared: Prepared, model: MultiTaskRecommender, data: DomainData) -> DomainBundle:
    return domain_bundle(model.export(data.name), data, raw_user_ids(prepared, data.name))


def gathered_export(model: MultiTaskRecommender, domain: str) -> HistoryExport:
    """The arrays a history bundle needs, read off the model's parts (catalogue, encoder, the domain's table)."""
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
