"""Universal sequence recommender on small real data: text-only domains, zero-shot transfer between Amazon domains,
fine-tuning parameter sets, attention weights and the dot export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m6rec.config import PrepareParams, ProtocolParams, TextEmbeddingsParams
from m6rec.data.dataset import domain_data, load_prepared
from m6rec.data.prepare import prepare_datasets
from m6rec.data.sequences import split_histories
from m6rec.evaluation.protocol import evaluate
from m6rec.models.popularity import MostPopular
from m6rec.models.base import NotServableError
from m6rec.models.seqrec import MODE_GROUPS, UniversalSeqRec, sequence_chunks
from m6rec.models.textsim import domain_text_vectors
from m6rec.text.cache import EmbeddingCache
from m6rec.text.embeddings import embed_items
from tests.data_fixtures import REPO, mirror_dir

SOURCE, TARGET = "amazon-scientific", "amazon-office"
PROTOCOL = ProtocolParams(ks=(10, 20), batch_users=512)
FAST = dict(dim=32, layers=1, heads=2, max_len=20)


@pytest.fixture(scope="module")
def amazon(tmp_path_factory):
    """Two real Amazon domains (200 sampled users each) and real MiniLM vectors of their interacted items."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("seqrec") / "prepared"
    prepare_datasets(mirror_dir(), out, REPO / "config" / "datasets.yaml",
                     PrepareParams(domains=(SOURCE, TARGET), max_users=200))
    prepared = load_prepared(out)
    cfg = TextEmbeddingsParams(in_dir=str(out), out_dir=str(out), only_interacted=True, dtype="float32")
    vecs, _, meta = embed_items(prepared, cfg, cache=EmbeddingCache())
    return {d: domain_data(prepared, d) for d in (SOURCE, TARGET)}, domain_text_vectors(vecs, meta)


@pytest.fixture(scope="module")
def pretrained(amazon):
    from m6rec.training.seqrec import SeqRecTrainParams, pretrain

    datas, text = amazon
    torch.manual_seed(0)
    model = UniversalSeqRec(**FAST)
    pretrain(model, {SOURCE: datas[SOURCE]}, text, PROTOCOL,
             SeqRecTrainParams(epochs=2, batch_size=64, lr=2e-3, valid_users=0, seed=0))
    return model


def test_a_domain_without_interactions_is_scored_from_text_alone(amazon):
    datas, text = amazon
    model = UniversalSeqRec(**FAST)
    model.attach_domain(TARGET, text[TARGET])  # no counts: a brand-new catalogue
    has_text = np.linalg.norm(text[TARGET], axis=1) > 0
    vecs = model.item_vectors(TARGET).detach()
    assert torch.isfinite(vecs).all() and vecs.shape == (datas[TARGET].n_items, FAST["dim"])
    # distinct texts give distinct vectors: the text, not an id table, defines an item
    assert len(torch.unique(vecs[torch.from_numpy(has_text)].round(decimals=5), dim=0)) > 0.9 * has_text.sum()
    item = int(np.flatnonzero(has_text)[0])
    scores = model.full_scores(TARGET, np.arange(1), np.array([[-1] * 19 + [item]]))
    assert torch.isfinite(scores).all() and int(scores[0].argmax()) == item  # the text residual: itself first


def test_zero_shot_beats_most_popular_on_a_held_out_domain(amazon, pretrained):
    datas, text = amazon
    target = datas[TARGET]
    pretrained.attach_domain(TARGET, text[TARGET], np.asarray(target.train.sum(axis=0)).ravel())
    zero_shot = evaluate(pretrained, target, "test", PROTOCOL)["ndcg@10"]
    pop = MostPopular().fit(target.train)
    popular = evaluate(pop, target, "test", PROTOCOL)["ndcg@10"]
    assert zero_shot > 1.5 * popular, (zero_shot, popular)


def test_each_finetune_mode_trains_exactly_its_parameters(amazon, pretrained):
    from m6rec.training.seqrec import SeqRecTrainParams, finetune, fraction_users

    datas, text = amazon
    target = datas[TARGET]
    users = fraction_users(target.n_users, 0.2, seed=0)
    assert set(users) <= set(fraction_users(target.n_users, 0.5, seed=0))  # nested fractions
    cfg = SeqRecTrainParams(epochs=1, batch_size=64, valid_users=0)
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    groups = pretrained.parameter_groups()
    for mode in ("zero_shot", "efficient", "full"):
        model, _ = finetune(pretrained, target, text[TARGET], mode, users, PROTOCOL, cfg)
        expect = {n for g in MODE_GROUPS[mode] for n in groups.get(g, [])}
        if mode == "full":
            expect.add(f"ids.{TARGET}.weight")
        assert {n for n, p in model.named_parameters() if p.requires_grad} == expect
        state = model.state_dict()
        for name, value in before.items():
            changed = not torch.equal(state[name], value)
            assert changed == (name in expect), (mode, name)
        assert (f"ids.{TARGET}.weight" in state) == (mode == "full")
        if mode == "full":
            assert state[f"ids.{TARGET}.weight"].abs().sum() > 0
    assert all(torch.equal(pretrained.state_dict()[k], v) for k, v in before.items())  # the source is untouched
    scratch, _ = finetune(pretrained, target, text[TARGET], "scratch", users, PROTOCOL, cfg,
                          model_args=pretrained.config())
    assert all(p.requires_grad for p in scratch.parameters())
    assert not torch.equal(scratch.state_dict()["adaptor.weight"], before["adaptor.weight"])


def test_attention_weights_and_export_match_the_scores(amazon, pretrained):
    datas, text = amazon
    target = datas[TARGET]
    pretrained.attach_domain(TARGET, text[TARGET], np.asarray(target.train.sum(axis=0)).ravel())
    history = split_histories(target, pretrained.history_len)["test"]
    weights = pretrained.explain(TARGET, history[:50])
    assert weights.shape == history[:50].shape
    assert np.all(weights[history[:50] < 0] == 0)
    has = (history[:50] >= 0).any(1)
    np.testing.assert_allclose(weights[has].sum(1), 1.0, atol=1e-5)
    pretrained.set_histories(TARGET, history)
    spec = pretrained.export(TARGET)
    users = np.arange(40)
    np.testing.assert_allclose(spec.user_vectors[users] @ spec.item_vectors.T,
                               pretrained.full_scores(TARGET, users, history[users]).numpy(), atol=1e-4)


def test_training_windows_cover_every_next_item_once():
    indptr = np.array([0, 5, 6])
    items = np.array([10, 11, 12, 13, 14, 20])
    x, y = sequence_chunks(indptr, items, max_len=3)
    assert sorted(y[y >= 0].tolist()) == [11, 12, 13, 14]  # every item but each user's first is a target once
    for row_x, row_y in zip(x, y):  # a target follows its input in the sequence
        for a, b in zip(row_x, row_y):
            assert (a < 0 and b < 0) or b == a + 1


def test_text_kernel_spans_mean_cosine_to_best_match():
    text = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    model = UniversalSeqRec(text_dim=3, dim=4, layers=1, heads=1, max_len=4, center_text=False)
    model.attach_domain("d", text)
    history = np.array([[-1, -1, 0, 3]])
    mean = model.text_kernel("d", history, tau=1e4)[0].numpy()
    np.testing.assert_allclose(mean, (text[0] + text[3]) @ text.T / 2, atol=1e-3)  # tau -> inf: mean cosine
    best = model.text_kernel("d", history, tau=1e-3)[0].numpy()
    np.testing.assert_allclose(best, np.maximum(text[0] @ text.T, text[3] @ text.T), atol=1e-2)  # tau -> 0: max
    assert model.text_kernel("d", np.array([[-1, -1, -1, -1]]), tau=0.1).abs().sum() == 0  # empty history
    model.set_histories("d", history)
    model.text_tau = 0.1
    with pytest.raises(NotServableError, match="text kernel"):
        model.export("d")


def test_catalogue_centring_and_recency_weighted_history_text():
    raw = np.array([[3.0, 4.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=np.float32)
    model = UniversalSeqRec(text_dim=3, dim=4, layers=1, heads=1, max_len=3, init_decay=0.5)
    model.attach_domain("d", raw)
    unit = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    has = np.linalg.norm(raw, axis=1) > 0
    want = unit - unit[has].mean(0)
    want[has] /= np.linalg.norm(want[has], axis=1, keepdims=True)
    tab = model.table("d")
    np.testing.assert_allclose(tab.text.numpy(), want * has[:, None], atol=1e-6)  # the item without text stays 0
    np.testing.assert_allclose(tab.raw.numpy(), unit, atol=1e-6)
    plain = UniversalSeqRec(text_dim=3, dim=4, layers=1, heads=1, max_len=3, center_text=False)
    plain.attach_domain("d", raw)
    np.testing.assert_allclose(plain.table("d").text.numpy(), unit, atol=1e-6)
    # Pooled history text: the item k steps back weighs decay ** k (0.5 here), padding nothing.
    u = model.text_state("d", torch.tensor([[-1, 0, 3]]))[0].detach().numpy()
    t = tab.text.numpy()
    last = 0.5 * t[0] + t[3]
    np.testing.assert_allclose(u[2], last / np.linalg.norm(last), atol=1e-5)
    np.testing.assert_allclose(u[1], t[0] / np.linalg.norm(t[0]), atol=1e-5)
    assert float(model.decay.detach()) == pytest.approx(0.5)
    # The decay is learned with the score's other scalars: it is trained in the efficient mode, not frozen.
    assert "decay_logit" in model.parameter_groups()["gate"]


def test_calibration_reads_no_label_and_leaves_the_served_popularity_as_it_was(amazon, pretrained):
    import copy
    import dataclasses

    import scipy.sparse as sp

    from m6rec.training.seqrec import calibrate_mix

    datas, text = amazon
    target = datas[TARGET]
    model = copy.deepcopy(pretrained)
    model.attach_domain(TARGET, text[TARGET], np.asarray(target.train.sum(axis=0)).ravel())
    pop_before = model.table(TARGET).pop.clone()
    choice = calibrate_mix(model, target)
    assert choice["seq"] in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0) and choice["text"] == 1.0
    assert torch.equal(model.table(TARGET).pop, pop_before)  # the served popularity input is restored
    # Other validation and test items: the same choice (only training histories are read).
    empty = sp.csr_matrix(target.test.shape, dtype=target.test.dtype)
    other = dataclasses.replace(target, valid=empty, test=empty)
    again = copy.deepcopy(pretrained)
    again.attach_domain(TARGET, text[TARGET], np.asarray(other.train.sum(axis=0)).ravel())
    assert calibrate_mix(again, other) == choice


def test_unordered_domains_calibrate_on_a_random_training_item_not_the_files_last(amazon):
    """For a domain whose interaction order means nothing (random split), the pseudo-target is a seeded random
    training item of the user: always one of the user's own items, never in its own input or mask."""
    from m6rec.data.sequences import user_sequences
    from m6rec.training.seqrec import observed_holdout

    datas, _ = amazon
    data = datas[TARGET]
    seq = user_sequences(data, ("train",))
    ins_o, tgt_o, _ = observed_holdout(data, 20, seed=0)
    ins_r, tgt_r, masks_r = observed_holdout(data, 20, seed=0, ordered=False)
    ins_r2, tgt_r2, _ = observed_holdout(data, 20, seed=0, ordered=False)
    np.testing.assert_array_equal(tgt_r, tgt_r2)
    np.testing.assert_array_equal(ins_r, ins_r2)
    lengths = np.diff(seq.indptr)
    users = np.flatnonzero(lengths >= 3)
    assert len(tgt_o) == len(tgt_r) == len(users)
    np.testing.assert_array_equal(tgt_o, seq.items[seq.indptr[users + 1] - 1])  # ordered: the last item
    assert (tgt_r != tgt_o).mean() > 0.3  # unordered: mostly another item
    for u, t, m, row in zip(users, tgt_r, masks_r, ins_r):
        own = seq.items[seq.indptr[u]: seq.indptr[u + 1]]
        assert t in own and len(m) == len(own) - 1
        assert sorted([*m.tolist(), int(t)]) == sorted(own.tolist())
        assert set(row[row >= 0].tolist()) <= set(m.tolist())
