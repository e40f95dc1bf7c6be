"""Download step: mirror fallback, checksum verification, atomic replacement."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from m6rec.data.sources import DataSourceError, fetch_dataset, is_complete, load_registry, sha256_file
from tests.data_fixtures import REPO, mirror_dir

REGISTRY = load_registry(REPO / "config" / "datasets.yaml")


def test_registry_matches_the_mirror_checksums():
    # Every registered file exists in the mirror with exactly the registered sha256 (DATASET.md lists the same).
    for spec in REGISTRY.values():
        assert is_complete(spec, mirror_dir() / spec.name), spec.name


def test_unreachable_official_source_falls_back_to_mirror(tmp_path: Path):
    spec = REGISTRY["ml-latest-small"]
    # The official host is unreachable here (no internet): the code must really try it and then use the mirror.
    origin = fetch_dataset(spec, tmp_path, mirror_dir(), offline=False, timeout=5)
    assert origin.startswith("mirror")
    assert is_complete(spec, tmp_path / spec.name)
    assert fetch_dataset(spec, tmp_path, mirror_dir(), offline=True) == "cached"


def test_corrupted_mirror_is_rejected_and_previous_data_kept(tmp_path: Path):
    spec = REGISTRY["amazon-office"]
    raw = tmp_path / "raw"
    fetch_dataset(spec, raw, mirror_dir(), offline=True)
    before = sha256_file(raw / spec.name / "Office.inter.json")
    # A mirror whose file is altered by one byte must be refused, naming the file.
    bad_mirror = tmp_path / "mirror"
    shutil.copytree(mirror_dir() / spec.name, bad_mirror / spec.name)
    path = bad_mirror / spec.name / "Office.inter.json"
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    (raw / spec.name / "Office.item.json").unlink()  # force a re-fetch
    with pytest.raises(DataSourceError, match="Office.inter.json: sha256"):
        fetch_dataset(spec, raw, bad_mirror, offline=True)
    # The incomplete local copy was not replaced by bad bytes.
    assert sha256_file(raw / spec.name / "Office.inter.json") == before


def test_missing_mirror_gives_a_clear_error(tmp_path: Path):
    spec = REGISTRY["ml-100k"]
    with pytest.raises(DataSourceError, match="ml-100k: could not be obtained.*M6REC_DATA_MIRROR"):
        fetch_dataset(spec, tmp_path / "raw", tmp_path / "nowhere", offline=True)
