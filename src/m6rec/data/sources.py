"""Dataset registry and the download step: official source first, local mirror as fallback, sha256 always.

A dataset lands in ``<raw_dir>/<name>/`` only when every file has the sha256 listed in ``config/datasets.yaml``;
it is assembled in a temporary folder and moved into place, so a failed or partial download never replaces good data.

A registry entry with ``path`` is a *local source* (a user's own data): its files are copied from that folder, with
no download and no mirror; a file listed with an empty sha256 is not checked (the `validate` gate checks its
content). Entries with a generic parser (``csv``, ``inter``: :data:`GENERIC_PARSERS`) describe their files and
columns in the registry (``interactions``, ``items``, ``sep``, ``columns``, ``item_columns``, ``ts_kind``), so a new
dataset in one of those formats needs no code.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from m6rec.data.splits import SPLIT_METHODS

log = logging.getLogger(__name__)

MIRROR_ENV = "M6REC_DATA_MIRROR"
OFFLINE_ENV = "M6REC_OFFLINE"


class DataSourceError(RuntimeError):
    """A dataset could not be obtained from any source with the expected checksums."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    parser: str
    domain: str
    feedback: str
    split: str
    has_text: bool
    files: dict[str, str]
    archive: str | None = None
    urls: dict[str, str] = field(default_factory=dict)
    gunzip_sha256: dict[str, str] = field(default_factory=dict)
    licence: str = ""
    # Local source: folder the files are copied from (relative to the working directory, i.e. the project root).
    path: str | None = None
    # Generic formats (parser csv | inter): which files and columns mean what.
    interactions: str | None = None  # interactions file (csv: required; inter: default <name>.inter)
    items: str | None = None  # optional item file (csv/tsv with item_columns; inter: default <name>.item if listed)
    sep: str | None = None  # field separator; default: tab for .tsv/.tab/.inter/.item files, else ","
    columns: dict[str, str] = field(default_factory=dict)  # user, item (required), rating, timestamp -> column
    item_columns: dict[str, Any] = field(default_factory=dict)  # item, title: column; text: column or list
    ts_kind: str = "unix"  # timestamp column holds: unix (seconds, or dates parsed to them) | order (a sequence index)


GENERIC_PARSERS = ("csv", "inter")
INTERACTION_COLUMNS = ("user", "item", "rating", "timestamp")
ITEM_COLUMNS = ("item", "title", "text")


def _check_generic(path: Path, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Check a generic-format entry and fill its defaults (interactions file, `files`); returns the entry."""
    where = f"{path}: dataset '{name}'"
    entry = dict(entry)
    columns = entry.get("columns") or {}
    if not isinstance(columns, dict) or set(columns) - set(INTERACTION_COLUMNS):
        raise DataSourceError(f"{where}: columns must map some of {list(INTERACTION_COLUMNS)} to column names, "
                              f"got {columns!r}")
    item_columns = entry.get("item_columns") or {}
    if not isinstance(item_columns, dict) or set(item_columns) - set(ITEM_COLUMNS):
        raise DataSourceError(f"{where}: item_columns must map some of {list(ITEM_COLUMNS)} to column names, "
                              f"got {item_columns!r}")
    if entry["parser"] == "csv":
        missing = [c for c in ("user", "item") if not columns.get(c)]
        if missing:
            raise DataSourceError(f"{where}: parser csv needs columns.{' and columns.'.join(missing)} "
                                  f"(the column names of the interactions file)")
        if not entry.get("interactions"):
            raise DataSourceError(f"{where}: parser csv needs `interactions: <file name>`")
    else:
        entry.setdefault("interactions", f"{name}.inter")
    if entry.get("feedback") == "explicit" and entry["parser"] == "csv" and not columns.get("rating"):
        raise DataSourceError(f"{where}: feedback explicit needs columns.rating")
    if entry.get("has_text") and not entry.get("items"):
        raise DataSourceError(f"{where}: has_text: true needs an item file (`items: <file name>`) with the texts")
    if entry.get("ts_kind", "unix") not in ("unix", "order"):
        raise DataSourceError(f"{where}: ts_kind must be unix or order, got {entry['ts_kind']!r}")
    files = dict(entry.get("files") or {})
    for key in ("interactions", "items"):
        if entry.get(key):
            files.setdefault(entry[key], "")  # listed without a sha256: required, content gated by `validate`
    entry["files"] = files
    return entry


def load_registry(path: str | Path) -> dict[str, DatasetSpec]:
    """Read the dataset registry (config/datasets.yaml) into specs keyed by dataset name."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        raw = yaml.safe_load(fh) or {}
    specs = {}
    for name, entry in (raw.get("datasets") or {}).items():
        if not isinstance(entry, dict) or "parser" not in entry:
            raise DataSourceError(f"{path}: dataset '{name}' must be a mapping with at least `parser`")
        if entry["parser"] in GENERIC_PARSERS:
            entry = _check_generic(path, name, entry)
        try:
            specs[name] = DatasetSpec(name=name, **entry)
        except TypeError as exc:
            raise DataSourceError(f"{path}: dataset '{name}' has a bad entry: {exc}") from exc
        if specs[name].feedback not in ("explicit", "implicit_count", "implied"):
            raise DataSourceError(f"{path}: dataset '{name}': unknown feedback '{specs[name].feedback}'")
        if specs[name].split not in SPLIT_METHODS:
            raise DataSourceError(f"{path}: dataset '{name}': unknown split '{specs[name].split}'")
    return specs


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_mirror() -> Path | None:
    """$M6REC_DATA_MIRROR, else ../shared/data when it exists (relative to the working directory)."""
    env = os.environ.get(MIRROR_ENV)
    if env:
        return Path(env)
    candidate = Path("..") / "shared" / "data"
    return candidate if candidate.is_dir() else None


def is_complete(spec: DatasetSpec, folder: Path) -> bool:
    """True when every registered file is in `folder` with the registered sha256 (if it lists one)."""
    return all((folder / n).is_file() and (not sha or sha256_file(folder / n) == sha) for n, sha in spec.files.items())


def _verify(spec: DatasetSpec, name: str, data: bytes) -> None:
    expected = spec.files[name]
    if not expected:  # a local source's file listed without a sha256
        return
    got = sha256_bytes(data)
    if got != expected:
        raise DataSourceError(f"{spec.name}/{name}: sha256 {got} does not match the registry's {expected}")


def _http_get(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "m6rec-download/0.1"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - URLs come from the registry
        return resp.read()


def _from_official(spec: DatasetSpec, timeout: float) -> dict[str, bytes]:
    """Fetch every file from the official source; raises on any network or checksum problem."""
    out: dict[str, bytes] = {}
    if spec.archive:
        log.info("%s: downloading %s", spec.name, spec.archive)
        blob = _http_get(spec.archive, timeout)
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            members = {Path(m).name: m for m in zf.namelist() if not m.endswith("/")}
            for name in spec.files:
                if name not in members:
                    raise DataSourceError(f"{spec.name}: archive {spec.archive} has no member {name}")
                out[name] = zf.read(members[name])
    else:
        missing = sorted(set(spec.files) - set(spec.urls))
        if missing:
            raise DataSourceError(f"{spec.name}: no official URL for {missing}")
        for name, url in spec.urls.items():
            log.info("%s: downloading %s", spec.name, url)
            data = _http_get(url, timeout)
            if name in spec.gunzip_sha256:
                # Served uncompressed; stored gzip-compressed like the mirror. Check the content, then compress.
                if sha256_bytes(data) != spec.gunzip_sha256[name]:
                    raise DataSourceError(f"{spec.name}/{name}: downloaded content has the wrong sha256")
                data = gzip.compress(data, compresslevel=9, mtime=0)
                out[name] = data
                continue
            out[name] = data
    for name, data in out.items():
        if name in spec.gunzip_sha256:
            continue
        _verify(spec, name, data)
    return out


def _read_folder(spec: DatasetSpec, folder: Path, what: str) -> dict[str, bytes]:
    """Every registered file of ``spec`` from ``folder`` (checked against the registry's sha256 where it has one);
    a missing folder or file is an error naming it and ``what`` the folder is."""
    if not folder.is_dir():
        raise DataSourceError(f"{spec.name}: {what} {folder} does not exist")
    out = {}
    for name in spec.files:
        path = folder / name
        if not path.is_file():
            raise DataSourceError(f"{spec.name}: file {path} named in the registry is missing from the {what}")
        data = path.read_bytes()
        _verify(spec, name, data)
        out[name] = data
    return out


def _from_mirror(spec: DatasetSpec, mirror: Path) -> dict[str, bytes]:
    return _read_folder(spec, mirror / spec.name, "mirror folder")


def _from_local(spec: DatasetSpec) -> dict[str, bytes]:
    """Every registered file from the entry's own folder (``path``)."""
    return _read_folder(spec, Path(spec.path or ""), "local source folder (registry `path`)")


def fetch_dataset(
    spec: DatasetSpec,
    raw_dir: Path,
    mirror: Path | None,
    offline: bool = False,
    timeout: float = 30.0,
) -> str:
    """Make ``raw_dir/spec.name`` complete and verified. Returns where the files came from."""
    target = raw_dir / spec.name
    errors: list[str] = []
    files: dict[str, bytes] | None = None
    origin = ""
    if spec.path:  # a local source: copied whenever the copy differs (its files may have no sha256 to compare)
        files, origin = _from_local(spec), f"local {spec.path}"
        if target.is_dir() and all((target / n).is_file() and (target / n).read_bytes() == data
                                   for n, data in files.items()):
            log.info("%s: already present and identical to %s in %s", spec.name, spec.path, target)
            return "cached"
    elif target.is_dir() and is_complete(spec, target):
        log.info("%s: already present and verified in %s", spec.name, target)
        return "cached"
    if files is None and not offline and (spec.archive or spec.urls):
        try:
            files, origin = _from_official(spec, timeout), "official"
        except Exception as exc:  # network errors vary by platform; every one means "try the mirror"
            errors.append(f"official source: {exc}")
            log.warning("%s: official source failed (%s); trying the local mirror", spec.name, exc)
    if files is None and mirror is not None:
        try:
            files, origin = _from_mirror(spec, mirror), f"mirror {mirror}"
        except DataSourceError as exc:
            errors.append(f"mirror: {exc}")
    if files is None:
        where = "; ".join(errors) or "no official source and no mirror configured"
        raise DataSourceError(f"{spec.name}: could not be obtained ({where}). Set ${MIRROR_ENV} to a folder "
                              f"holding {spec.name}/ with the files {sorted(spec.files)}")
    raw_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=raw_dir))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("%s: %d files from %s -> %s", spec.name, len(files), origin, target)
    return origin


def describe(spec: DatasetSpec) -> dict[str, Any]:
    return {"name": spec.name, "domain": spec.domain, "feedback": spec.feedback, "split": spec.split,
            "has_text": spec.has_text, "licence": spec.licence}
