"""The ``m6rec`` command line (also ``python -m m6rec``): run the pipeline, ask a model, serve it, add a domain.

    m6rec run [STAGE ...] [--force] [--single-item] [--dry]        # dvc repro
    m6rec recommend --domain ml-100k --user 1 [--k 10] [--model PATH|models:/m6rec@champion] [--json]
    m6rec similar --domain ml-100k --item 50 [--k 10] [--model ...] [--json]
    m6rec serve [--host 127.0.0.1] [--port 3000] [--model PATH|URI]  # bentoml serve of the service
    m6rec add-domain NAME --path FILE --format csv|inter [--user-col ...] [--run]  # --run: up to a zero-shot bundle
    m6rec download [--offline] [--mirror DIR]                        # raw data (m6rec.stages.download)
    m6rec orchestration check-raw-data|build-bento|stages ...        # what the Airflow DAGs run

Every command runs from the project directory (params.yaml, dvc.yaml, config/datasets.yaml). The heavy imports
happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

log = logging.getLogger("m6rec.cli")

app = typer.Typer(name="m6rec", help="m6rec: open-domain recommendation (pipeline, models, serving).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

SERVICE = "m6rec.serving.service:M6RecService"
STAGES_AFTER_ADD = ("prepare", "validate", "text_embeddings", "seqrec")  # onboarding: up to a zero-shot bundle


def _tool(name: str) -> str:
    """The project's `name` executable: beside this Python (the venv) first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise typer.BadParameter(f"{name} not found beside {sys.executable} or on PATH")
    return found


def _setup() -> None:
    from m6rec.log import setup_logging

    setup_logging()


def _repro(targets: list[str], force: bool = False, single_item: bool = False, dry: bool = False) -> int:
    cmd = [_tool("dvc"), "repro", *(["--force"] if force else []), *(["--single-item"] if single_item else []),
           *(["--dry"] if dry else []), *targets]
    log.info("running %s", " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode


@app.command()
def run(targets: Annotated[list[str] | None, typer.Argument(help="stages to reproduce (default: all)")] = None,
        force: Annotated[bool, typer.Option("--force", "-f", help="rerun even if up to date")] = False,
        single_item: Annotated[bool, typer.Option("--single-item", "-s", help="only the targets, not their "
                                                  "upstream stages")] = False,
        dry: Annotated[bool, typer.Option("--dry", help="print what would run")] = False) -> None:
    """Run the pipeline: `dvc repro` (the stages of dvc.yaml; only what changed reruns)."""
    _setup()
    raise typer.Exit(_repro(list(targets or []), force, single_item, dry))


def _model_source(model: str | None, params: Path) -> str:
    """--model, else the serve section (bundle_dir, else model_uri) of the params file."""
    if model:
        return model
    from m6rec.serving.loader import serve_settings

    env = dict(os.environ, M6REC_PARAMS=str(params))
    cfg, _ = serve_settings(env)
    return cfg.bundle_dir or cfg.model_uri


def _print(rows: list[dict], as_json: bool, header: dict) -> None:
    if as_json:
        typer.echo(json.dumps({**header, "items": rows}, indent=2))
        return
    typer.echo(" ".join(f"{k}={v}" for k, v in header.items() if v is not None))
    width = max([len(r["item"]) for r in rows] + [4])
    typer.echo(f"{'rank':>4}  {'item':<{width}}  {'score':>9}  title")
    for rank, r in enumerate(rows, 1):
        typer.echo(f"{rank:>4}  {r['item']:<{width}}  {r['score']:>9.4f}  {r['title']}")


def _load(model: str | None, params: Path):
    import m6rec

    return m6rec.load(_model_source(model, params), params=params if params.is_file() else None)


def _client_error(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="bundle folder or MLflow URI "
                                              "(default: serve.bundle_dir, else serve.model_uri)")]
ParamsOpt = Annotated[Path, typer.Option("--params", help="params file (serve, tracking sections)")]


@app.command()
def recommend(domain: Annotated[str, typer.Option("--domain", "-d", help="domain (dataset) name")],
              user: Annotated[str | None, typer.Option("--user", "-u", help="user id (known users)")] = None,
              items: Annotated[list[str] | None, typer.Option("--item", "-i", help="an item the (anonymous) user "
                                                               "liked; repeat for several")] = None,
              text: Annotated[str | None, typer.Option("--text", help="free text (anonymous user)")] = None,
              k: Annotated[int, typer.Option("--k", "-k", help="number of items")] = 10,
              model: ModelOpt = None, params: ParamsOpt = Path("params.yaml"),
              as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False) -> None:
    """Top-k items for a user (or, with --item/--text, for an anonymous user), in-process from a model."""
    from m6rec.api import rows as ranked_rows
    from m6rec.serving.recommender import RequestError

    if (user is None) == (not items and not text):
        raise typer.BadParameter("give --user, or --item/--text for an anonymous user (not both)")
    _setup()
    m = _load(model, params)
    source = "model"
    try:
        if user is not None:  # the Recommender's answer itself, to show a popularity fallback for an unknown user
            answer = m.recommender.recommend(domain, user, k)
            rows, source = ranked_rows(answer), answer.get("source", "model")
        else:
            rows = m.recommend_items(domain, items or [], k, text=text)
    except RequestError as exc:
        raise _client_error(exc) from None
    _print(rows, as_json, {"domain": domain, "user": user, "source": source, "model": m.source,
                           "version": m.version})


@app.command()
def similar(domain: Annotated[str, typer.Option("--domain", "-d")],
            item: Annotated[str, typer.Option("--item", "-i", help="item id")],
            k: Annotated[int, typer.Option("--k", "-k")] = 10, model: ModelOpt = None,
            params: ParamsOpt = Path("params.yaml"),
            as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The items most similar to one item."""
    from m6rec.serving.recommender import RequestError

    _setup()
    m = _load(model, params)
    try:
        rows = m.similar_items(domain, item, k)
    except RequestError as exc:
        raise _client_error(exc) from None
    _print(rows, as_json, {"domain": domain, "item": item, "model": m.source, "version": m.version})


@app.command()
def serve(host: Annotated[str, typer.Option(help="address to bind (0.0.0.0 only behind a proxy)")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port")] = 3000,
          model: Annotated[str | None, typer.Option("--model", "-m", help="bundle folder or MLflow URI (default: "
                                                    "params.yaml serve, i.e. models:/m6rec@champion)")] = None,
          workers: Annotated[int | None, typer.Option(help="BentoML workers")] = None) -> None:
    """Start the BentoML service (`bentoml serve m6rec.serving.service:M6RecService`), 127.0.0.1:3000 by default."""
    _setup()
    env = dict(os.environ)
    if model:
        from m6rec.api import is_model_uri

        if is_model_uri(model):
            env["M6REC_MODEL_URI"] = model
            env.pop("M6REC_BUNDLE", None)
        else:
            env["M6REC_BUNDLE"] = model
    if workers:
        extra = f"services.m6rec.workers={workers}"
        env["BENTOML_CONFIG_OPTIONS"] = f"{env.get('BENTOML_CONFIG_OPTIONS', '')} {extra}".strip()
    cmd = [_tool("bentoml"), "serve", SERVICE, "--host", host, "--port", str(port)]
    log.info("running %s", " ".join(cmd))
    raise typer.Exit(subprocess.run(cmd, env=env, check=False).returncode)


@app.command("add-domain")
def add_domain(
    name: Annotated[str, typer.Argument(help="new domain (dataset) name")],
    path: Annotated[Path, typer.Option("--path", help="interactions file (.csv/.tsv, or a RecBole .inter)")],
    fmt: Annotated[str, typer.Option("--format", help="csv | inter")] = "csv",
    user_col: Annotated[str | None, typer.Option(help="user id column (csv: required)")] = None,
    item_col: Annotated[str | None, typer.Option(help="item id column (csv: required)")] = None,
    rating_col: Annotated[str | None, typer.Option(help="rating column (none: implied feedback)")] = None,
    time_col: Annotated[str | None, typer.Option(help="timestamp column: unix seconds or dates")] = None,
    item_file: Annotated[Path | None, typer.Option(help="item file (titles, texts), beside --path")] = None,
    item_id_col: Annotated[str | None, typer.Option(help="item id column of the item file (default "
                                                    "--item-col)")] = None,
    title_col: Annotated[str | None, typer.Option(help="title column of the item file")] = None,
    text_col: Annotated[list[str] | None, typer.Option(help="text column of the item file; repeat for several")
                        ] = None,
    sep: Annotated[str | None, typer.Option(help="separator (default: tab for .tsv/.inter, else ',')")] = None,
    feedback: Annotated[str | None, typer.Option(help="explicit | implied | implicit_count")] = None,
    split: Annotated[str | None, typer.Option(help="chronological | random (default: by --time-col)")] = None,
    ts_kind: Annotated[str, typer.Option(help="unix | order: what the time column holds")] = "unix",
    pretrain: Annotated[bool, typer.Option(help="a pretraining source of the next full run (default: served "
                                                "zero-shot, no model is retrained for it)")] = False,
    baselines: Annotated[bool, typer.Option(help="run the baselines on it")] = True,
    finetune: Annotated[bool, typer.Option(help="a fine-tuning target")] = False,
    registry: Annotated[Path, typer.Option(help="dataset registry")] = Path("config/datasets.yaml"),
    params: Annotated[Path, typer.Option(help="params file")] = Path("params.yaml"),
    raw_dir: Annotated[Path | None, typer.Option(help="raw data folder (default: data.raw_dir)")] = None,
    replace: Annotated[bool, typer.Option(help="overwrite a registered dataset of that name")] = False,
    run_stages: Annotated[bool, typer.Option("--run", help="then dvc repro " + ", ".join(STAGES_AFTER_ADD))
                          ] = False,
) -> None:
    """Register your own dataset (CSV/TSV with a column mapping, or RecBole atomic files) as a new domain."""
    from m6rec.config import ConfigError, DataParams, load_section
    from m6rec.data.new_domain import NewDomain
    from m6rec.data.new_domain import add_domain as add
    from m6rec.data.parsers import ParseError
    from m6rec.data.sources import DataSourceError

    _setup()
    roles = {k: v for k, v, default in (("pretrain", pretrain, True), ("baselines", baselines, True),
                                        ("finetune", finetune, False)) if v != default}
    new = NewDomain(name=name, path=path, format=fmt, user_col=user_col, item_col=item_col, rating_col=rating_col,
                    time_col=time_col, item_file=item_file, item_id_col=item_id_col, title_col=title_col,
                    text_cols=tuple(text_col or ()), sep=sep, feedback=feedback, split=split, ts_kind=ts_kind,
                    roles=roles)
    try:
        raw = raw_dir or Path(load_section("data", DataParams, params).raw_dir)
        summary = add(new, registry, params, raw, replace=replace)
    except (ConfigError, DataSourceError, ParseError) as exc:
        raise _client_error(exc) from None
    typer.echo(json.dumps(summary, indent=2))
    if run_stages:
        if Path("data.dvc").is_file():  # data/raw changed: record it, as `make data` does
            code = subprocess.run([_tool("dvc"), "commit", "-f", "-q", "data.dvc"], check=False).returncode
            if code:
                raise typer.Exit(code)
        raise typer.Exit(_repro(list(STAGES_AFTER_ADD)))


@app.command()
def download(offline: Annotated[bool, typer.Option(help="skip official sources")] = False,
             mirror: Annotated[Path | None, typer.Option(help="local mirror folder")] = None,
             params: ParamsOpt = Path("params.yaml")) -> None:
    """Get the raw data of every registered dataset into data/raw (official source, else the mirror)."""
    from m6rec.stages.download import main as download_main

    argv = ["--params", str(params), *(["--offline"] if offline else []), *(["--mirror", str(mirror)] if mirror
                                                                             else [])]
    raise typer.Exit(download_main(argv))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def orchestration(ctx: typer.Context) -> None:
    """What the Airflow DAGs run: check-raw-data, build-bento, stages (`python -m m6rec.orchestration --help`)."""
    from m6rec.orchestration.cli import main as orchestration_main

    raise typer.Exit(orchestration_main(list(ctx.args)))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (usage errors: 2, with click's message)."""
    try:
        app(args=argv, prog_name="m6rec")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
