"""Checkpoints are data: a crafted pickle is refused without running, and only m6rec models are rebuilt."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from m6rec.models.mf import BPRMF
from m6rec.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


class _Payload:
    """Unpickling this creates a marker file: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"class": "m6rec.models.mf.BPRMF", "args": {}, "state_dict": {}, "params": {},
                "meta": {"x": _Payload(marker)}}, evil)
    # The file really is a code-running pickle: the unsafe loader would create the marker.
    assert b"touch" in evil.read_bytes()
    with pytest.raises(CheckpointError, match=r"refusing checkpoint .*model\.pt"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_plain_pickle_with_a_reduce_is_refused(tmp_path):
    """Not even a torch zip file: a bare pickle stream (torch.load still reads the legacy format)."""
    marker = tmp_path / "pwned2"
    evil = tmp_path / "legacy.pt"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()


def test_class_outside_the_model_package_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"class": "subprocess.Popen", "args": {"args": ["touch", str(tmp_path / "ran")]},
                "state_dict": {}, "params": {}, "meta": {}}, path)
    with pytest.raises(CheckpointError, match="subprocess.Popen"):
        load_checkpoint(path)
    assert not (tmp_path / "ran").exists()
    torch.save({"class": "m6rec.models.mf.np", "args": {}, "state_dict": {}, "params": {}, "meta": {}}, path)
    with pytest.raises(CheckpointError, match="not a torch.nn.Module"):
        load_checkpoint(path)


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    model = BPRMF(n_users=5, n_items=4, dim=3)
    path = save_checkpoint(tmp_path / "m.pt", model, {"n_users": 5, "n_items": 4, "dim": 3}, params={})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(cut)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not an m6rec checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def test_numpy_and_paths_in_meta_are_saved_as_plain_data(tmp_path):
    model = BPRMF(n_users=5, n_items=4, dim=3)
    meta = {"offsets": {"a": np.int64(3)}, "sizes": np.array([1, 2]), "src": tmp_path / "x", "t": (1, "b")}
    path = save_checkpoint(tmp_path / "m.pt", model, {"n_users": 5, "n_items": 4, "dim": 3}, params={},
                           meta=meta)
    again, info = load_checkpoint(path)
    assert info["meta"] == {"offsets": {"a": 3}, "sizes": [1, 2], "src": str(tmp_path / "x"), "t": (1, "b")}
    assert type(info["meta"]["offsets"]["a"]) is int
    for name, p in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], p)
    with pytest.raises(TypeError, match=r"meta.bad is a set"):
        save_checkpoint(tmp_path / "n.pt", model, {"n_users": 5, "n_items": 4, "dim": 3}, params={},
                        meta={"bad": {1}})
