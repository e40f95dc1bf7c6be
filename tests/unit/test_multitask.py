"""Multi-task model: task weighting reaches exactly the parameters it should, fine-tuning modes freeze exactly what
they claim, checkpoints round-trip, and the heads learn on the whole of ml-100k. Real data throughout (tiny slices
of ml-100k and amazon-office; PureSVD item vectors and TF-IDF text vectors of the real item texts)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from m6rec.config import ProtocolParams
from m6rec.data.dataset import DomainData, domain_data
from m6rec.evaluation.history import evaluate_model
from m6rec.evaluation.metrics import rating_metrics
from m6rec.model_params import MultitaskParams, TrainParams
from m6rec.models.multitask import GROUPS, MODE_GROUPS, Batch, MultiTaskRecommender
from m6rec.models.pretrained import PretrainedItems
from m6rec.training.assembly import architecture, build_model
from m6rec.training.checkpoint import load_checkpoint, save_checkpoint
from m6rec.training.history import ExampleSampler, train_model
from tests.pretrained_fixtures import svd_items

ARCH = architecture(MultitaskParams(max_len=20, n_interests=3, hidden=16))
ALL_TASKS = {"retrieval": 1.0, "rating": 0.5, "like": 0.5}


def text_vectors(data: DomainData, dim: int = 24) -> np.ndarray:
    """A cheap real text encoder: TF-IDF of the item texts reduced by truncated SVD, unit length."""
    tfidf = TfidfVectorizer(min_df=2).fit_transform(data.items["text"].fillna(""))
    vecs = TruncatedSVD(dim, random_state=0).fit_transform(tfidf).astype(np.float32)
    return vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)


@pytest.fixture(scope="module")
def setup(tiny_prepared):
    datas = {d: domain_data(tiny_prepared, d) for d in ("ml-100k", "amazon-office")}
    svd = svd_items(datas, 16)
    items = PretrainedItems(base=svd.base, text={d: text_vectors(x) for d, x in datas.items()}, text_weight=None,
                            text_scale=0.25, source_domains=tuple(datas))
    return datas, items


def make_model(setup, weights=ALL_TASKS, pooling="attention", seed=0) -> MultiTaskRecommender:
    datas, items = setup
    return build_model(items, datas, pooling, weights, ARCH, seed)


def batches(setup, model, seed=0) -> dict[str, Batch]:
    """The first real training batch of each domain."""
    datas, _ = setup
    sampler = ExampleSampler(datas, {d: model.domain_index(d) for d in datas},
                             TrainParams(batch_size=64, negatives=32, seed=seed), model.encoder.max_len)
    out: dict[str, Batch] = {}
    for b in sampler.epoch():
        out.setdefault(model.domains[b.domain], b)
    return out


def grads(model) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}


def test_zero_task_weight_removes_that_tasks_gradient(setup):
    ref = make_model(setup)
    batch = batches(setup, ref)["ml-100k"]  # explicit: all three tasks apply
    losses = ref.task_losses(batch)
    assert set(losses) == {"retrieval", "rating", "like"}
    assert ref.calculate_loss(batch).item() == pytest.approx(
        sum(ALL_TASKS[t] * losses[t].item() for t in losses), rel=1e-6)
    shared = [n for n, _ in ref.named_parameters() if n.startswith("encoder.") or n == "text_proj.weight"]
    for task, head in (("rating", "rating_head."), ("like", "like_head."), ("retrieval", "retrieval_log_scale")):
        weights = {**ALL_TASKS, task: 0.0}
        model = make_model(setup, weights)
        model.calculate_loss(batch).backward()
        got = grads(model)
        # The task's own head gets no gradient at all ...
        assert all(got[n] is None for n in got if n.startswith(head)), task
        # ... and the shared parameters get exactly the other tasks' weighted gradient.
        other = make_model(setup, ALL_TASKS)
        parts = other.task_losses(batch)
        sum(w * parts[t] for t, w in weights.items() if w > 0).backward()
        want = grads(other)
        for n in shared:
            torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-7, msg=f"{task}: {n}")
        # With the task back in, the shared gradient changes: the weight really gated something.
        full = make_model(setup, ALL_TASKS)
        full.calculate_loss(batch).backward()
        assert any(not torch.allclose(grads(full)[n], got[n]) for n in shared), task
        assert all(grads(full)[n] is not None and grads(full)[n].abs().sum() > 0
                   for n in grads(full) if n.startswith(head)), task


def test_rating_task_is_skipped_on_implicit_domains(setup):
    model = make_model(setup)
    batch = batches(setup, model)["amazon-office"]
    assert batch.rating.isnan().all() and (batch.like == 1).all()
    assert set(model.task_losses(batch)) == {"retrieval", "like"}
    model.calculate_loss(batch).backward()
    assert all(p.grad is None for p in model.rating_head.parameters())


def test_task_weights_are_checked():
    with pytest.raises(ValueError, match="unknown tasks"):
        MultiTaskRecommender.check_task_weights({"retrieval": 1.0, "click": 1.0})
    with pytest.raises(ValueError, match="at least one > 0"):
        MultiTaskRecommender.check_task_weights({"retrieval": 0.0})


@pytest.mark.parametrize("mode", ["zero_shot", "efficient", "full"])
def test_finetune_modes_freeze_exactly_what_they_claim(setup, mode):
    model = make_model(setup)
    trainable = set(model.set_trainable(mode))
    groups = model.parameter_groups()
    assert sorted(n for names in groups.values() for n in names) == sorted(n for n, _ in model.named_parameters())
    assert trainable == {n for g in MODE_GROUPS[mode] for n in groups[g]}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    expected = {
        "zero_shot": set(),
        "efficient": {"rating_head.0.weight", "rating_head.0.bias", "rating_head.2.weight", "rating_head.2.bias",
                      "like_head.0.weight", "like_head.0.bias", "like_head.2.weight", "like_head.2.bias",
                      "retrieval_log_scale", "text_proj.weight", "items.d0.recency", "items.d1.recency"},
    }
    if mode in expected:
        assert trainable == expected[mode]
    else:
        assert trainable == {n for n, _ in model.named_parameters()}
    # One optimiser step over *every* parameter (as a careless loop would do) on a batch of each domain.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    if trainable:
        loss = sum(model.calculate_loss(b) for b in batches(setup, model).values())
        loss.backward()
        optimizer.step()
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == (n in trainable), (mode, n, changed)


def test_checkpoint_round_trip_reproduces_scores(setup, tmp_path):
    model = make_model(setup)
    model.eval()
    hist = batches(setup, model)["ml-100k"].history[:8]
    before = model.score(0, hist).scores
    path = save_checkpoint(tmp_path / "m.pt", model, args=model.config(), params={}, meta={})
    again, info = load_checkpoint(path)
    assert info["class"] == "m6rec.models.multitask.MultiTaskRecommender"
    torch.testing.assert_close(again.score(0, hist).scores, before, rtol=0, atol=0)
    assert again.table(0).rating_stats[0] > 0  # ml-100k's training mean rating came along


def test_shared_weights_move_to_another_catalogue(setup):
    datas, items = setup
    a = make_model(setup, seed=1)
    b = build_model(items, {"amazon-office": datas["amazon-office"]}, "attention", ALL_TASKS, ARCH, seed=2)
    base_before = b.table(0).base.clone()
    b.load_shared(a.shared_state())
    for n, v in a.shared_state().items():
        torch.testing.assert_close(b.state_dict()[n], v)
    torch.testing.assert_close(b.table(0).base, base_before)  # the catalogue itself is untouched
    small = build_model(items, datas, "attention", ALL_TASKS, {**ARCH, "hidden": 8}, seed=0)
    with pytest.raises((ValueError, RuntimeError)):
        small.load_shared(a.shared_state())


def test_every_parameter_has_one_group(setup):
    model = make_model(setup, pooling="mean")  # no recency adapters with mean pooling
    groups = model.parameter_groups()
    assert not groups["adapters"] and set(groups) == set(GROUPS)


@pytest.mark.slow
def test_heads_learn_ratings_and_likes_on_ml100k(ml100k_full):
    data = ml100k_full
    cfg = MultitaskParams(max_len=30, temperature=0.2, seed=0,
                          train=TrainParams(epochs=2, examples_per_user=20, valid_users=300, seed=0))
    model = build_model(svd_items({data.name: data}, 32), {data.name: data}, "attention", ALL_TASKS,
                        architecture(cfg), cfg.seed)
    info = train_model(model, {data.name: data}, cfg.train, ProtocolParams(), progress=False)
    assert info["best_valid"] > info["initial_valid"]
    res = evaluate_model(model, {data.name: data}, ("test",), ProtocolParams(), cfg.train)
    test = res[data.name]["test"]
    mean_rmse = rating_metrics(np.full(len(data.frames["test"]), data.frames["train"]["value"].mean()),
                               data.frames["test"]["value"].to_numpy())["rmse"]
    assert test["rmse"] < 0.97 * mean_rmse  # the rating head beats the global mean
    assert test["auc"] > 0.75  # liked test items vs sampled unseen ones
    assert 0.05 < test["ndcg@20"] < 1
