"""Shared pytest fixtures (loaded as a plugin from pyproject): small real data built from the dataset mirror."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One torch thread per test process: the CI machine has 2 cores and over-subscription is far slower.
os.environ.setdefault("M6REC_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
TINY_DOMAINS = ("ml-latest-small", "ml-100k", "amazon-office", "amazon-scientific", "lastfm-hetrec2011",
                "lightgcn-gowalla")


def mirror_dir() -> Path:
    """The local dataset mirror: $M6REC_DATA_MIRROR or ../shared/data beside the checkout."""
    env = os.environ.get("M6REC_DATA_MIRROR")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.fail(f"dataset mirror not found at {path}: set M6REC_DATA_MIRROR")
    return path


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every registered dataset fetched through the real download path (official sources skipped: offline)."""
    import torch

    torch.set_num_threads(int(os.environ["M6REC_THREADS"]))
    from m6rec.data.sources import fetch_dataset, load_registry

    out = tmp_path_factory.mktemp("raw")
    registry = load_registry(REPO / "config" / "datasets.yaml")
    for spec in registry.values():
        fetch_dataset(spec, out, mirror_dir(), offline=True)
    return out


@pytest.fixture(scope="session")
def tiny_prepared_dir(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Canonical tables for all six domains, 60 sampled users each (real rows, real item catalogues)."""
    from m6rec.config import PrepareParams
    from m6rec.data.prepare import prepare_datasets as run

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    run(raw_dir, out, REPO / "config" / "datasets.yaml", PrepareParams(domains=TINY_DOMAINS, max_users=60))
    return out


@pytest.fixture(scope="session")
def tiny_prepared(tiny_prepared_dir: Path):
    from m6rec.data.dataset import load_prepared

    return load_prepared(tiny_prepared_dir)


@pytest.fixture(scope="session")
def ml100k_full(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The whole of ml-100k in canonical form (943 users): big enough for model-quality assertions."""
    from m6rec.config import PrepareParams
    from m6rec.data.dataset import domain_data, load_prepared
    from m6rec.data.prepare import prepare_datasets as run

    out = tmp_path_factory.mktemp("ml100k") / "prepared"
    run(raw_dir, out, REPO / "config" / "datasets.yaml", PrepareParams(domains=("ml-100k",)))
    return domain_data(load_prepared(out), "ml-100k")


@pytest.fixture(scope="session", autouse=True)
def _isolated_mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """Stages log to MLflow: keep test runs out of the project's own store (a real sqlite store in tmp)."""
    if "MLFLOW_TRACKING_URI" in os.environ:
        yield
        return
    store = tmp_path_factory.mktemp("mlflow")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)
