# syntax=docker/dockerfile:1.7
# MLflow tracking + model registry server: Postgres backend store, artifacts proxied to S3 / MinIO.
#
#   docker build -f docker/mlflow.Dockerfile -t m6rec-mlflow docker/      # the context is docker/ only
#
# The command (backend URI, bucket, allowed hosts) is set in docker/compose.yaml. Pins: the MLflow of
# requirements.lock, the rest constrained by docker/requirements-docker.lock.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY requirements-docker.lock /tmp/requirements-docker.lock
RUN pip install -c /tmp/requirements-docker.lock mlflow psycopg2-binary boto3 \
    && pip check \
    && useradd --create-home --uid 50001 mlflow

USER 50001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:5000/health', timeout=4)"]
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
