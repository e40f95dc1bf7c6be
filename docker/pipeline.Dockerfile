# syntax=docker/dockerfile:1.7
# m6rec pipeline worker + Airflow: one image runs the DVC stages and every Airflow component
# (api-server, scheduler with the LocalExecutor, dag-processor, triggerer; see docker/compose.yaml).
#
#   docker build -f docker/pipeline.Dockerfile -t m6rec-pipeline .        # from the repository root
#
# Dependencies: docker/requirements-docker.lock = requirements.lock (the project's pins, preferred as-is) plus the
# container extras of docker/requirements-docker.in (Postgres driver, DVC's S3 remote, boto3). Only
# python-dateutil differs from requirements.lock (botocore needs <3); tests/dags/test_docker.py checks this.
# torch is the CPU build, from PyTorch's CPU wheel index.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/m6rec/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    M6REC_PROJECT_DIR=/opt/m6rec \
    DVC_NO_ANALYTICS=1

# git: DVC and MLflow record the commit; curl: health checks; tini: reaps the stage subprocesses.
# Debian's package versions are not pinned: the base image tag (pin its digest in production) fixes them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git curl tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 50000 --gid 0 --home-dir /home/m6rec m6rec \
    && mkdir -p /opt/airflow/logs /opt/airflow/auth /opt/m6rec \
    && chown -R 50000:0 /opt/airflow /opt/m6rec \
    && chmod -R g+rwX /opt/airflow /opt/m6rec

WORKDIR /opt/m6rec
COPY docker/requirements-docker.lock /tmp/requirements-docker.lock
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r /tmp/requirements-docker.lock \
    && pip check

COPY --chown=50000:0 . /opt/m6rec
# Editable, so the code that runs is the code DVC hashes as stage deps (also when a checkout is mounted here).
# Without a .git folder in the image, DVC runs without SCM (a mounted git checkout hides this local setting).
RUN pip install --no-deps -e . \
    && dvc config --local core.no_scm true \
    && chown -R 50000:0 /opt/m6rec && chmod -R g+rwX /opt/m6rec

USER 50000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["airflow", "standalone"]
