"""Stage `blend` on real tiny data: candidate bundles in, one blend bundle and its metrics out."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from m6rec.data.dataset import domain_data, load_prepared
from m6rec.models.itemknn import ItemKNN
from m6rec.models.popularity import MostPopular
from m6rec.serving.bundle_io import load_bundle
from m6rec.serving.export import export_model
from m6rec.stages import blend

REPO = Path(__file__).resolve().parents[2]
DOMAINS = ("ml-100k", "amazon-office")


def test_stage_main_writes_the_blend_bundle_and_metrics(tiny_prepared_dir: Path, tmp_path: Path):
    prepared = load_prepared(tiny_prepared_dir)
    datas = {d: domain_data(prepared, d) for d in DOMAINS}
    for name, make in (("mostpop", MostPopular), ("itemknn", lambda: ItemKNN(neighbours=20))):
        models = {}
        for d, data in datas.items():
            models[d] = make().fit(data.train)
            models[d].domain = d
        export_model(tmp_path / "bundles" / name, models, datas, prepared, {"model": name, "stage": "baselines"})
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["blend"].update(in_dir=str(tiny_prepared_dir), bundle=str(tmp_path / "blend"),
                           metrics=str(tmp_path / "blend.json"), step=0.25,
                           bundles=[str(tmp_path / "bundles"), str(tmp_path / "absent")])
    params["runtime"]["workers"] = 2  # one domain per worker process
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert blend.main(["--params", str(path)]) == 0
    # The same figures and served weights as one process fitting the domains one after the other.
    params["runtime"]["workers"] = 1
    params["blend"].update(bundle=str(tmp_path / "blend-1"), metrics=str(tmp_path / "blend-1.json"))
    (tmp_path / "params-1.yaml").write_text(yaml.safe_dump(params))
    assert blend.main(["--params", str(tmp_path / "params-1.yaml")]) == 0
    assert (tmp_path / "blend-1.json").read_text() == (tmp_path / "blend.json").read_text()
    metrics = json.loads((tmp_path / "blend.json").read_text())
    assert set(metrics) == set(DOMAINS)
    for d in DOMAINS:
        assert set(metrics[d]) == {"mostpop", "itemknn", "blend"}
        weights = metrics[d]["blend"]["weights"]
        assert set(weights) <= {"mostpop", "itemknn"} and abs(sum(weights.values()) - 1) < 1e-9
        # The fit maximises validation: the blend is at least as good as each candidate there.
        assert metrics[d]["blend"]["valid"]["ndcg@20"] >= max(metrics[d][m]["valid"]["ndcg@20"]
                                                              for m in ("mostpop", "itemknn")) - 1e-9
        # The record says which grid point won and whether the cross-fitted test let the mixture be served.
        fit = metrics[d]["blend"]["fit"]
        assert set(fit["mixture"]) == {"mostpop", "itemknn"} and len(fit["fold_gains"]) == params["blend"]["folds"]
        assert fit["accepted"] == (len(weights) > 1)
    b = load_bundle(tmp_path / "blend")
    assert b.meta["model"] == "blend" and {x.kind for x in b.domains.values()} == {"blend"}
    assert b.meta["metrics"]["ml-100k"]["blend"]["test"] == metrics["ml-100k"]["blend"]["test"]
