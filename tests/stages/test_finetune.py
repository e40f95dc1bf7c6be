"""The finetune stage on real tiny data: a multi-task model trained on amazon-office (from a real pretrained
checkpoint, see tests/stages/test_multitask.py) adapted to ml-100k in every mode, and the modes' freezing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from m6rec.config import ConfigError, ProtocolParams
from m6rec.data.dataset import domain_data, load_prepared
from m6rec.data.sequences import split_histories
from m6rec.model_params import FINETUNE_MODES, FinetuneParams, TrainParams
from m6rec.models.multitask import MODE_GROUPS
from m6rec.stages import finetune, multitask
from m6rec.training import assembly
from m6rec.training.checkpoint import load_checkpoint
from m6rec.training.history import train_model
from m6rec.training.transfer import finetune_target
from tests.stages.test_multitask import build_pretrained, params_for

SOURCE, TARGET = "amazon-office", "ml-100k"
FAST = {"domains": [TARGET], "fractions": [0.5, 1.0], "epochs": 2, "examples_per_user": 10, "negatives": 64,
        "batch_size": 128, "valid_users": 0}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pretrained checkpoint (shared with the multitask tests), a multi-task model of SOURCE, then finetune."""
    pretrained = build_pretrained(tmp_path_factory.getbasetemp() / "m6rec-pretrained")
    root = tmp_path_factory.mktemp("finetune")
    for name in ("validated", "graph", "pretrain"):
        (root / name).symlink_to(pretrained / name, target_is_directory=True)
    path = params_for(root, [SOURCE], finetune=FAST)
    assert multitask.main(["--params", str(path)]) == 0
    assert finetune.main(["--params", str(path)]) == 0
    return root


@pytest.fixture(scope="module")
def parts(project: Path):
    source, _ = load_checkpoint(project / "multitask" / assembly.CHECKPOINT)
    items = assembly.load_pretrained(project / "pretrain", project / "graph")
    data = domain_data(load_prepared(project / "validated"), TARGET)
    return source, items, data


def test_stage_measures_every_mode_and_fraction(project: Path):
    metrics = json.loads((project / "metrics" / "finetune.json").read_text())
    runs = metrics[TARGET]
    assert set(runs) == {"zero_shot"} | {f"{m}@{f:g}" for m in ("efficient", "full", "scratch") for f in (0.5, 1.0)}
    for name, res in runs.items():
        for split in ("valid", "test"):
            assert {"recall@20", "ndcg@10", "ndcg@20", "rmse", "auc"} <= set(res[split]), (name, split)
            assert 0 <= res[split]["ndcg@10"] <= 1 and res[split]["n_users"] > 0
    # The test split is every user's, whatever the training share.
    assert len({res["test"]["n_users"] for res in runs.values()}) == 1
    assert runs["zero_shot"]["n_train_users"] == 0 and "fit_s" not in runs["zero_shot"]
    timings = json.loads((project / "reports" / "timings" / "finetune.json").read_text())[TARGET]
    assert timings["zero_shot"]["fit_s"] == 0.0 and timings["full@1"]["fit_s"] > 0
    assert runs["full@0.5"]["n_train_users"] < runs["full@1"]["n_train_users"]
    assert runs["zero_shot"]["n_trainable"] == 0
    assert 0 < runs["efficient@1"]["n_trainable"] < runs["full@1"]["n_trainable"] == runs["scratch@1"]["n_trainable"]
    rows = json.loads((project / "plots" / "finetune.json").read_text())
    assert [r["fraction"] for r in rows] == [0.5, 1.0]
    for r in rows:
        assert set(r) == {"fraction"} | {f"{TARGET}/{m}" for m in FINETUNE_MODES}
        assert r[f"{TARGET}/zero_shot"] == runs["zero_shot"]["test"]["ndcg@10"]  # a level line
    assert rows[1][f"{TARGET}/full"] == runs["full@1"]["test"]["ndcg@10"]


def test_saved_model_is_the_full_fine_tune_on_all_users(project: Path):
    model, info = load_checkpoint(project / "finetune" / TARGET / assembly.CHECKPOINT)
    assert model.domains == [TARGET] and info["meta"]["mode"] == "full" and info["meta"]["fraction"] == 1.0
    assert info["meta"]["source_domains"] == [SOURCE]
    assert info["params"]["finetune"]["train"]["epochs"] == FAST["epochs"]


def test_family_bundle_serves_source_domains_and_the_fine_tuned_target(project: Path, parts):
    """models/finetune/bundle = the multi-task bundle's domain + the fine-tuned target, each with its own attention,
    and its metrics are the runs' (so the register stage can gate it on them)."""
    from m6rec.serving.bundle_io import load_bundle
    from m6rec.serving.recommender import Recommender

    family = load_bundle(project / "finetune" / "bundle")
    source_bundle = load_bundle(project / "multitask" / "bundle")
    assert set(family.domains) == {SOURCE, TARGET} and family.meta["model"] == "attention_mt-finetune-full"
    np.testing.assert_array_equal(family.domains[SOURCE].item_vectors, source_bundle.domains[SOURCE].item_vectors)
    runs = json.loads((project / "metrics" / "finetune.json").read_text())[TARGET]
    assert family.meta["metrics"][TARGET][family.meta["model"]]["valid"] == runs["full@1"]["valid"]
    assert (family.meta["metrics"][SOURCE][family.meta["model"]]
            == source_bundle.meta["metrics"][SOURCE][source_bundle.meta["model"]])
    saved, _ = load_checkpoint(project / "finetune" / TARGET / assembly.CHECKPOINT)
    _, _, data = parts
    hist = torch.from_numpy(split_histories(data, saved.encoder.max_len)["test"])
    u = int(torch.nonzero((hist >= 0).sum(1) >= 2).view(-1)[0])
    target = family.domains[TARGET]
    scores = Recommender(family).domains[TARGET].scorer.users(torch.tensor([u]))
    torch.testing.assert_close(scores, saved.score(0, hist[u:u + 1]).scores)
    # The target's attention weights are the fine-tuned ones, not the source's.
    assert not np.allclose(target.scorer.weights["key.weight"], family.domains[SOURCE].scorer.weights["key.weight"])


def test_user_subsets_are_seeded_nested_and_sized(parts):
    _, _, data = parts
    eligible = np.flatnonzero(np.diff(data.train.indptr) >= 2)
    small, half, every = (assembly.user_subset(data, f, seed=3) for f in (0.1, 0.5, 1.0))
    assert set(small) <= set(half) <= set(every) and np.array_equal(every, eligible)
    assert len(half) == round(0.5 * len(eligible)) and len(small) == round(0.1 * len(eligible))
    assert np.array_equal(small, assembly.user_subset(data, 0.1, seed=3))
    assert not np.array_equal(small, assembly.user_subset(data, 0.1, seed=4))


@pytest.mark.parametrize("mode", ["efficient", "full", "scratch"])
def test_training_changes_exactly_the_parameters_the_mode_claims(parts, mode):
    source, items, data = parts
    users = assembly.user_subset(data, 0.5, seed=0)
    model = assembly.target_model(source, items, data, mode, "text", 0.1, seed=0, users=users)
    groups = model.parameter_groups()
    claimed = {n for g in MODE_GROUPS["full" if mode == "scratch" else mode] for n in groups[g]}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == claimed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tc = TrainParams(epochs=1, examples_per_user=5, negatives=32, batch_size=64, valid_users=0)
    train_model(model, {TARGET: data}, tc, ProtocolParams(), users={TARGET: users}, progress=False)
    for name, value in model.state_dict().items():
        same = torch.equal(before[name], value)
        if name in claimed:
            assert not same, f"{mode}: trainable {name} did not move"
        else:
            assert same, f"{mode}: {name} changed but the mode freezes it"


def test_non_scratch_modes_start_from_the_source_weights(parts):
    source, items, data = parts
    shared = source.shared_state()
    for mode in ("zero_shot", "efficient", "full"):
        model = assembly.target_model(source, items, data, mode, "text", 0.1, seed=0)
        for name, value in shared.items():
            torch.testing.assert_close(model.state_dict()[name], value, msg=f"{mode}: {name}")
        assert not model.table(0).base.any()  # target_items "text": the target's items come from text alone
        assert model.table(0).text.float().abs().sum() > 0
    scratch = assembly.target_model(source, items, data, "scratch", "text", 0.1, seed=0)
    assert not torch.equal(scratch.state_dict()["encoder.queries"], shared["encoder.queries"])
    pretrained = assembly.target_model(source, items, data, "full", "pretrained", 0.1, seed=0)
    torch.testing.assert_close(pretrained.table(0).base, torch.from_numpy(items.base[TARGET]))


def test_a_target_the_source_trained_on_is_refused(parts):
    source, items, data = parts
    renamed = dataclasses.replace(data, name=SOURCE)
    with pytest.raises(ConfigError, match="zero-shot would not be zero-shot"):
        finetune_target(source, items, renamed, FinetuneParams(domains=(SOURCE,)), ProtocolParams(),
                        progress=False)
    with pytest.raises(ConfigError, match="modes"):
        FinetuneParams(modes=("zero_shot", "lora"))
    with pytest.raises(ConfigError, match="fractions"):
        FinetuneParams(fractions=(0.0, 1.0))


def test_a_target_the_pretraining_never_saw_is_fine_tuned_from_its_text(project: Path, parts):
    """Inductive fine-tuning: without the target in the pretrained model, its items come from the text embeddings
    (the same vectors the pretraining read), and every text-based mode gives what it gives for a pretrained target."""
    source, items, data = parts
    blind = dataclasses.replace(items, base={d: v for d, v in items.base.items() if d != TARGET},
                                text={d: v for d, v in items.text.items() if d != TARGET})
    with pytest.raises(ValueError, match="not in the pretrained model"):
        assembly.target_model(source, blind, data, "zero_shot", "text", 0.0, 0)
    embeddings = (project / "validated").resolve().parent / "embeddings"
    inductive = assembly.with_unseen_domains(blind, {TARGET: data}, embeddings)
    assert set(inductive.base) == set(items.base) and not inductive.base[TARGET].any()
    np.testing.assert_allclose(inductive.text[TARGET], items.text[TARGET], atol=1e-3)
    cfg = FinetuneParams(domains=(TARGET,), fractions=(1.0,), modes=("zero_shot", "efficient"),
                         train=TrainParams(epochs=1, examples_per_user=5, negatives=64, batch_size=128, valid_users=0))
    got, _ = finetune_target(source, inductive, data, cfg, ProtocolParams(), progress=False)
    want, _ = finetune_target(source, items, data, cfg, ProtocolParams(), progress=False)
    for run in ("zero_shot", "efficient@1"):
        assert got[run]["test"]["ndcg@20"] == pytest.approx(want[run]["test"]["ndcg@20"], abs=1e-6), run


def test_runs_in_worker_processes_give_what_one_process_gives(parts):
    """Each mode and fraction is seeded on its own: fitted two at a time in forked workers, the figures and the
    saved model are those of the runs one after the other in this process."""
    source, items, data = parts
    cfg = FinetuneParams(domains=(TARGET,), fractions=(0.5, 1.0),
                         train=TrainParams(epochs=1, examples_per_user=5, negatives=64, batch_size=128, valid_users=0))
    one, model_one = finetune_target(source, items, data, cfg, ProtocolParams(), progress=False, workers=1)
    two, model_two = finetune_target(source, items, data, cfg, ProtocolParams(), progress=False, workers=2)
    assert list(two) == list(one) == ["zero_shot"] + [f"{m}@{f:g}" for m in ("efficient", "full", "scratch")
                                                       for f in (0.5, 1.0)]
    for run in one:
        assert {k: v for k, v in two[run].items() if not k.endswith("_s")} == \
            {k: v for k, v in one[run].items() if not k.endswith("_s")}, run
    state_one, state_two = model_one.state_dict(), model_two.state_dict()
    assert list(state_one) == list(state_two)
    for name, tensor in state_one.items():
        assert torch.equal(tensor, state_two[name]), name
