"""Raw data against the dataset registry: which registered files are missing or differ from their sha256.

Used by the Airflow task `check_raw_data` (m6rec.orchestration.raw_data) and by the `prepare` stage, so that plain
`dvc repro` refuses modified raw data with the same message. A registry entry whose files carry no sha256 (a user's
own dataset that changes every day) is not checked here: the `validate` expectations gate it instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class RawDataError(RuntimeError):
    """data/raw differs from the registry (the message names each file and both hashes)."""


@dataclass(frozen=True)
class DatasetState:
    name: str
    missing: tuple[str, ...]  # registered files that are absent
    modified: tuple[tuple[str, str, str], ...]  # (file, registry sha256, actual sha256)

    @property
    def status(self) -> str:
        return "modified" if self.modified else "missing" if self.missing else "verified"


def has_checksums(spec: Any) -> bool:
    """True when the registry entry (m6rec.data.sources.DatasetSpec) lists a sha256 for at least one file."""
    return any(bool(sha) for sha in spec.files.values())


def dataset_state(spec: Any, folder: Path) -> DatasetState:
    """Compare `folder` with a registry entry file by file (files listed without a sha256 are only required)."""
    from m6rec.data.sources import sha256_file

    missing, modified = [], []
    for name, expected in spec.files.items():
        path = folder / name
        if not path.is_file():
            missing.append(name)
            continue
        if not expected:
            continue
        actual = sha256_file(path)
        if actual != expected:
            modified.append((name, expected, actual))
    return DatasetState(spec.name, tuple(missing), tuple(modified))


def modified_message(states: list[DatasetState], raw_dir: str, registry: str) -> str:
    lines = [f"raw data differs from the registry ({registry}); nothing was overwritten:"]
    for st in states:
        for name, expected, actual in st.modified:
            lines.append(f"  {raw_dir}/{st.name}/{name}: sha256 {actual}, registry expects {expected}")
    lines.append("Either restore the registered version (`dvc checkout data.dvc`, or delete the dataset folder and "
                 "re-run the download), or accept the new data by updating its sha256 in the registry in a "
                 "reviewed change; the `validate` gate then checks it before any training.")
    return "\n".join(lines)


def verify_raw(specs: list[Any], raw_dir: Path, registry: str) -> list[str]:
    """Raise RawDataError naming every modified file of the datasets that list sha256s; returns the names of the
    datasets without checksums (left to the expectations)."""
    checked = [s for s in specs if has_checksums(s)]
    states = [dataset_state(s, raw_dir / s.name) for s in checked]
    modified = [s for s in states if s.modified]
    if modified:
        raise RawDataError(modified_message(modified, str(raw_dir), registry))
    return [s.name for s in specs if not has_checksums(s)]
