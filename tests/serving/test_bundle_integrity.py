"""What a bundle from a registry cannot do: escape its folder, unpickle, pass truncated files, or change unnoticed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from m6rec.serving.bundle_io import content_hash, export_bundle, load_bundle
from m6rec.serving.bundle_scorers import BundleError
from tests.serving.svd_bundles import svd_domain

DOMAIN = "amazon-office"


@pytest.fixture()
def bundle(tiny_prepared, tmp_path):
    return export_bundle(tmp_path / "b", {DOMAIN: svd_domain(tiny_prepared, DOMAIN, 4)}, {"model": "m"})


def test_domain_name_outside_the_bundle_is_refused(bundle, tmp_path):
    """bundle.json naming ``../outside``: a complete domain lies there, yet nothing is loaded from it."""
    shutil.copytree(bundle / DOMAIN, tmp_path / "outside")
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["domains"] = {"../outside": meta["domains"][DOMAIN]}
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"'\.\./outside' is not a plain folder name"):
        load_bundle(bundle)
    with pytest.raises(BundleError, match="outside"):
        content_hash(bundle)


def test_domain_folder_symlinked_outside_is_refused(bundle, tmp_path):
    shutil.move(bundle / DOMAIN, tmp_path / "elsewhere")
    (bundle / DOMAIN).symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load_bundle(bundle)


def test_file_symlinked_outside_is_refused(bundle, tmp_path):
    target = tmp_path / "pop.npy"
    shutil.move(bundle / DOMAIN / "popularity.npy", target)
    (bundle / DOMAIN / "popularity.npy").symlink_to(target)
    with pytest.raises(BundleError, match="links outside the bundle folder"):
        load_bundle(bundle)


def test_object_array_is_refused_without_unpickling(bundle):
    n = len(np.load(bundle / DOMAIN / "popularity.npy"))
    np.save(bundle / DOMAIN / "popularity.npy", np.array([{"x": 1}] * n, dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match=r"popularity\.npy is unreadable.*allow_pickle"):
        load_bundle(bundle)


@pytest.mark.parametrize("name", ["item_vectors.npy", "seen.npz", "ids.json"])
def test_truncated_file_is_a_bundle_error_naming_it(bundle, name):
    file = bundle / DOMAIN / name
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        load_bundle(bundle)


def test_content_hash_follows_every_byte_and_ignores_foreign_files(bundle, tmp_path):
    h = content_hash(bundle)
    assert h.startswith("sha256:") and len(h) == len("sha256:") + 64
    copy = shutil.copytree(bundle, tmp_path / "copy")
    (copy / "MLmodel").write_text("flavors: {}\n")  # what MLflow adds beside the bundle files
    assert content_hash(copy) == h
    vec = copy / DOMAIN / "item_vectors.npy"
    raw = bytearray(vec.read_bytes())
    raw[-1] ^= 1
    vec.write_bytes(bytes(raw))
    assert content_hash(copy) != h
    shutil.copy(bundle / DOMAIN / "item_vectors.npy", vec)
    assert content_hash(copy) == h
    (copy / DOMAIN / "popularity.npy").rename(copy / DOMAIN / "popularity2.npy")  # same bytes, other name
    assert content_hash(copy) != h
    shutil.rmtree(copy / DOMAIN)
    with pytest.raises(BundleError, match="domain folder amazon-office/ is missing"):
        content_hash(copy)
