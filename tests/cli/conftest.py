"""A real small serving bundle: ml-100k (60 sampled users, from the mirror through the real download and prepare
code), SVD-8 vectors of its training interactions."""

from __future__ import annotations

from pathlib import Path

import pytest

from m6rec.config import PrepareParams
from m6rec.data.dataset import load_prepared
from m6rec.data.prepare import prepare_datasets
from m6rec.data.sources import fetch_dataset, load_registry
from m6rec.serving.bundle_io import export_bundle
from tests.data_fixtures import REPO, mirror_dir
from tests.serving.svd_bundles import svd_bundle

DOMAIN = "ml-100k"


@pytest.fixture(scope="session")
def ml100k_small(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cli-data")
    registry = REPO / "config" / "datasets.yaml"
    fetch_dataset(load_registry(registry)[DOMAIN], root / "raw", mirror_dir(), offline=True)
    prepare_datasets(root / "raw", root / "prepared", registry, PrepareParams(domains=(DOMAIN,), max_users=60))
    return load_prepared(root / "prepared")


@pytest.fixture(scope="session")
def small_bundle(ml100k_small, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bundle(tmp_path_factory.mktemp("cli-bundle") / "bundle", svd_bundle(ml100k_small, [DOMAIN], 8),
                         {"model": "svd8"})
