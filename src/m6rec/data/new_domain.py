"""Register a user's own dataset as a new domain, with no code: what ``m6rec add-domain`` does.

1. build a generic registry entry (parser ``csv`` or ``inter``, a local source ``path``, the column mapping);
2. parse the files right away with that entry, so a wrong column or file name fails here, naming it;
3. write the entry to the registry (config/datasets.yaml), the domain to params.yaml's top-level ``domains`` and,
   for explicit ratings, the observed scale to ``validate.rating_scales`` (both files keep their comments);
4. copy the files into ``<raw_dir>/<name>/`` (:func:`m6rec.data.sources.fetch_dataset`), where ``prepare`` reads them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m6rec.data.sources import DataSourceError, DatasetSpec, GENERIC_PARSERS, fetch_dataset, load_registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewDomain:
    """What the user tells ``add-domain`` (the CLI's options)."""

    name: str
    path: Path  # the interactions file (.csv/.tsv, or <name>.inter)
    format: str = "csv"  # csv | inter
    user_col: str | None = None  # csv: required; inter: default user_id
    item_col: str | None = None  # csv: required; inter: default item_id
    rating_col: str | None = None  # none: every interaction counts 1 (implied feedback)
    time_col: str | None = None  # none: the file's row order per user
    item_file: Path | None = None  # item titles/texts, in the same folder as `path`
    item_id_col: str | None = None  # default: item_col
    title_col: str | None = None
    text_cols: tuple[str, ...] = ()  # joined into the item text (inter: default every token field)
    sep: str | None = None  # default by extension (tab for .tsv/.inter/.item)
    feedback: str | None = None  # explicit | implied | implicit_count; default explicit iff a rating column
    split: str | None = None  # chronological | random; default chronological iff a time column
    ts_kind: str = "unix"  # unix | order
    kind: str = "custom"  # reports' domain kind (movies, e-commerce, ...)
    roles: dict[str, bool] = field(default_factory=dict)  # pretrain / baselines / finetune (params.yaml domains)


def _relative(path: Path) -> str:
    """`path` relative to the working directory (the project root) when inside it, else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def registry_entry(new: NewDomain) -> dict[str, Any]:
    """The config/datasets.yaml entry of `new` (checked by :func:`m6rec.data.sources.load_registry` on use)."""
    from m6rec.serving.bundle import DOMAIN_NAME

    if not DOMAIN_NAME.match(new.name):
        raise DataSourceError(f"domain name {new.name!r} must be letters, digits, '.', '_' or '-'")
    if new.format not in GENERIC_PARSERS:
        raise DataSourceError(f"--format must be one of {list(GENERIC_PARSERS)}, got {new.format!r}")
    if not new.path.is_file():
        raise DataSourceError(f"interactions file {new.path} does not exist")
    folder = new.path.resolve().parent
    if new.item_file is not None:
        if not new.item_file.is_file():
            raise DataSourceError(f"item file {new.item_file} does not exist")
        if new.item_file.resolve().parent != folder:
            raise DataSourceError(f"item file {new.item_file} must be in the folder of {new.path} ({folder}): the "
                                  f"registry copies one folder")
    columns = {k: v for k, v in (("user", new.user_col), ("item", new.item_col), ("rating", new.rating_col),
                                 ("timestamp", new.time_col)) if v}
    if new.format == "csv" and not {"user", "item"} <= set(columns):
        raise DataSourceError("--format csv needs --user-col and --item-col (the interactions file's column names)")
    rated = bool(new.rating_col) or new.format == "inter" and _inter_has(new.path, "rating")
    timed = bool(new.time_col) or new.format == "inter" and _inter_has(new.path, "timestamp")
    entry: dict[str, Any] = {
        "parser": new.format, "domain": new.kind,
        "feedback": new.feedback or ("explicit" if rated else "implied"),
        "split": new.split or ("chronological" if timed else "random"),
        "has_text": new.item_file is not None, "path": _relative(folder),
        "interactions": new.path.name,
    }
    if new.item_file is not None:
        entry["items"] = new.item_file.name
    if new.sep:
        entry["sep"] = new.sep
    if columns:
        entry["columns"] = columns
    item_columns = {k: v for k, v in (("item", new.item_id_col), ("title", new.title_col)) if v}
    if new.text_cols:
        item_columns["text"] = list(new.text_cols)
    if item_columns:
        entry["item_columns"] = item_columns
    if new.ts_kind != "unix":
        entry["ts_kind"] = new.ts_kind
    entry["licence"] = "user data (local source)"
    return entry


def _inter_has(path: Path, name: str) -> bool:
    """Whether a RecBole .inter file's header has the field `name`."""
    with path.open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
    return any(h.partition(":")[0] == name for h in header)


def spec_of(name: str, entry: dict[str, Any], registry_path: Path) -> DatasetSpec:
    """`entry` checked exactly as the registry loader checks it (a one-entry registry in memory)."""
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / registry_path.name
        probe.write_text(yaml.safe_dump({"datasets": {name: entry}}), encoding="utf-8")
        return load_registry(probe)[name]


def rating_scale(values: np.ndarray) -> list[float]:
    """[min, max, step] of observed ratings: step 1 or 0.5 when every value lies on that grid, else [min, max]."""
    lo, hi = float(values.min()), float(values.max())
    for step in (1.0, 0.5):
        if np.allclose((values - lo) / step, np.round((values - lo) / step)):
            return [lo, hi, step]
    return [lo, hi]


def _round_trip():
    from ruamel.yaml import YAML

    yml = YAML()  # round-trip mode: comments, order and layout of the hand-written files are kept
    yml.preserve_quotes = True
    yml.width = 4096  # never fold the registry's long URLs
    yml.indent(mapping=2, sequence=4, offset=2)  # the files' own style: `key:` then `  - item` two deeper
    return yml


def write_registry(registry_path: Path, name: str, entry: dict[str, Any], replace: bool = False) -> None:
    from ruamel.yaml.comments import CommentedMap

    yml = _round_trip()
    doc = yml.load(registry_path.read_text(encoding="utf-8")) if registry_path.is_file() else CommentedMap()
    datasets = doc.setdefault("datasets", CommentedMap())
    if name in datasets and not replace:
        raise DataSourceError(f"{registry_path} already registers a dataset {name!r} (--replace to overwrite it)")
    datasets[name] = entry
    with registry_path.open("w", encoding="utf-8") as fh:
        yml.dump(doc, fh)


def write_params(params_path: Path, name: str, roles: dict[str, bool], scale: list[float] | None) -> None:
    """Add `name` to the top-level ``domains`` (and its rating scale to ``validate.rating_scales``).

    A pretraining source goes before the first domain that is not one: the graph stage's graph spans the prepared
    domains up to its last source (m6rec.graph.build), so a source after Gowalla would drag its 41k items in."""
    from ruamel.yaml.comments import CommentedMap

    yml = _round_trip()
    doc = yml.load(params_path.read_text(encoding="utf-8"))
    if "domains" not in doc:
        raise DataSourceError(f"{params_path} has no top-level `domains` list to add {name!r} to")
    flow = CommentedMap(roles)
    flow.fa.set_flow_style()
    domains = doc["domains"]
    if name in domains:
        del domains[name]
    position = len(domains)
    if roles.get("pretrain", True):  # before the first non-source, so the graph stays a prefix of the prepared data
        position = next((i for i, (_, r) in enumerate(domains.items()) if (r or {}).get("pretrain") is False),
                        position)
    domains.insert(position, name, flow)
    if scale is not None and "validate" in doc:
        scales = doc["validate"].setdefault("rating_scales", CommentedMap())
        seq = list(scale)
        from ruamel.yaml.comments import CommentedSeq

        cs = CommentedSeq(seq)
        cs.fa.set_flow_style()
        scales[name] = cs
    with params_path.open("w", encoding="utf-8") as fh:
        yml.dump(doc, fh)


def add_domain(new: NewDomain, registry_path: Path, params_path: Path, raw_dir: Path,
               replace: bool = False) -> dict[str, Any]:
    """Register, check, record and copy `new` (see the module docstring); returns a summary."""
    from m6rec.data.parsers import parse_dataset

    registry_path, params_path = Path(registry_path), Path(params_path)
    if not replace and registry_path.is_file() and new.name in load_registry(registry_path):
        raise DataSourceError(f"{registry_path} already registers a dataset {new.name!r} (--replace to overwrite)")
    entry = registry_entry(new)
    spec = spec_of(new.name, entry, registry_path)
    inter, items = parse_dataset(spec, new.path.resolve().parent)  # a bad column or file fails here, named
    scale = rating_scale(inter["value"].to_numpy()) if spec.feedback == "explicit" else None
    write_registry(registry_path, new.name, entry, replace=replace)
    write_params(params_path, new.name, dict(new.roles), scale)
    origin = fetch_dataset(spec, Path(raw_dir), None, offline=True)
    summary = {"name": new.name, "interactions": int(len(inter)), "users": int(inter["raw_user"].nunique()),
               "items": int(len(items)), "feedback": spec.feedback, "split": spec.split, "rating_scale": scale,
               "raw": str(Path(raw_dir) / new.name), "origin": origin}
    log.info("registered %s in %s and %s: %s", new.name, registry_path, params_path, summary)
    return summary
