"""The one top-level `domains` list of params.yaml and the per-stage lists config.py resolves from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from m6rec.config import ConfigError, GraphParams, PrepareParams, check_domain, load_params, section, stage_domains
from m6rec.data.prepare import PrepareError, prepare_datasets
from m6rec.model_params import BaselinesParams, FinetuneParams, MultitaskParams
from tests.data_fixtures import REPO

STAGES = {"prepare": PrepareParams, "baselines": BaselinesParams, "graph": GraphParams,
          "multitask": MultitaskParams, "finetune": FinetuneParams}


def test_project_params_resolve_to_the_stage_lists_the_pipeline_ran_with():
    params = load_params(REPO / "params.yaml")
    text = ("ml-latest-small", "ml-100k", "amazon-office", "amazon-scientific", "lastfm-hetrec2011")
    want = {"prepare": text + ("lightgcn-gowalla",), "baselines": text, "graph": text,
            "multitask": ("ml-latest-small", "amazon-office", "amazon-scientific", "lastfm-hetrec2011"),
            "finetune": ("ml-100k",)}
    for stage, cls in STAGES.items():
        assert section(params, stage, cls).domains == want[stage], stage
        assert stage_domains(params, stage) == want[stage]
    for stage in STAGES:  # no stage section keeps a list of its own: one entry adds a domain everywhere
        assert "domains" not in (params[stage] or {}), stage


def test_adding_a_domain_is_one_entry():
    params = load_params(REPO / "params.yaml")
    params["domains"]["shop"] = {}
    for stage in ("prepare", "baselines", "graph", "multitask"):
        assert section(params, stage, STAGES[stage]).domains[-1] == "shop"
    assert "shop" not in section(params, "finetune", FinetuneParams).domains
    params["domains"]["shop"] = {"finetune": True, "baselines": False}
    assert section(params, "finetune", FinetuneParams).domains == ("ml-100k", "shop")
    assert "shop" not in section(params, "multitask", MultitaskParams).domains
    assert "shop" not in section(params, "baselines", BaselinesParams).domains


def test_unknown_domain_role_and_stage_override_are_clear_errors():
    params = {"domains": {"ml-100k": {"pretrian": True}}, "graph": {}}
    with pytest.raises(ConfigError, match=r"domains.ml-100k: unknown keys \['pretrian'\]"):
        section(params, "graph", GraphParams)
    params = {"domains": {"ml-100k": {"finetune": "yes"}}, "graph": {}}
    with pytest.raises(ConfigError, match=r"domains.ml-100k.finetune must be true or false"):
        section(params, "graph", GraphParams)
    params = {"domains": {"ml-100k": None, "amazon-office": {}}, "graph": {"domains": ["ml-1m"]}}
    with pytest.raises(ConfigError, match=r"graph.domains names \['ml-1m'\], which the top-level `domains` list"):
        section(params, "graph", GraphParams)
    params["graph"] = {"domains": ["amazon-office"]}  # an explicit experiment list of declared domains is kept
    assert section(params, "graph", GraphParams).domains == ("amazon-office",)
    with pytest.raises(ConfigError, match=r"unknown domain 'ml-1m': params.yaml `domains` declares"):
        check_domain(params, "ml-1m")
    with pytest.raises(ConfigError, match=r"domains must be a non-empty mapping"):
        section({"domains": ["ml-100k"], "graph": {}}, "graph", GraphParams)


def test_prepare_names_a_domain_the_registry_lacks(tmp_path: Path):
    params = {"domains": {"ml-100k": {}, "my-shop": {}}, "prepare": {"out_dir": str(tmp_path / "p")}}
    cfg = section(params, "prepare", PrepareParams)
    with pytest.raises(PrepareError, match=r"names datasets \['my-shop'\] that .* does not register.*add-domain"):
        prepare_datasets(tmp_path / "raw", tmp_path / "p", REPO / "config" / "datasets.yaml", cfg)
