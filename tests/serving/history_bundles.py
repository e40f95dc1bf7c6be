"""Test helper: a real history-attention model trained briefly on real tiny data, and its serving bundle domain.

The model is the multitask stage's own (``build_model`` over PureSVD item vectors, one short epoch of
``train_model``), exported with the stage's ``domain_bundle``: what the service serves is what the stage exports.
"""

from __future__ import annotations

from m6rec.data.dataset import DomainData, Prepared, domain_data
from m6rec.evaluation.protocol import EvaluateParams
from m6rec.models.multitask import MultiTaskRecommender
from m6rec.serving.bundle import DomainBundle, raw_user_ids
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
