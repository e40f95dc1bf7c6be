# syntax=docker/dockerfile:1.7
# m6rec BentoML service, the fallback image. The primary way is BentoML's own, with the champion packed in:
#   python -m m6rec.orchestration build-bento && bentoml containerize m6rec:latest     (see docs/serving.md)
# This image serves the same service without a built bento: at start-up it loads models:/m6rec@champion from the
# MLflow server in MLFLOW_TRACKING_URI (or a bundle folder in M6REC_BUNDLE). Health: BentoML's GET /readyz (ready:
# model and encoder loaded) below, GET /livez for liveness.
#
#   docker build -f docker/service.Dockerfile -t m6rec-service .          # from the repository root
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    BENTOML_HOME=/home/m6rec/bentoml

# Same dependency set as the pipeline image (shared layer cache when both are built on one host).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 50000 --gid 0 --home-dir /home/m6rec m6rec

WORKDIR /opt/m6rec
COPY docker/requirements-docker.lock /tmp/requirements-docker.lock
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r /tmp/requirements-docker.lock \
    && pip check

COPY --chown=50000:0 . /opt/m6rec
RUN pip install --no-deps -e .

USER 50000
EXPOSE 3000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["curl", "-fsS", "http://localhost:3000/readyz"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["bentoml", "serve", "m6rec.serving.service:M6RecService", "--host", "0.0.0.0", "--port", "3000"]
