# The flow image: what a Prefect Kubernetes work pool runs for each flow run (prefect.yaml,
# definitions.work_pools.kubernetes). Build it with `make image`; see docs/kubernetes.md.
# Pinned base: Python 3.11 (the version the project is tested on) on Debian bookworm.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

# uid/gid 1000, as the serving pods, so one fsGroup fits the shared model store volume.
RUN groupadd --system --gid 1000 aviary \
    && useradd --system --uid 1000 --gid 1000 --home-dir /opt/aviary --no-create-home --shell /usr/sbin/nologin aviary

# prefect.yaml's pull step runs each flow from here: entrypoints are flows/<name>.py.
WORKDIR /opt/aviary
COPY --chown=1000:1000 . /opt/aviary
RUN python -m pip install --no-compile /opt/aviary \
    && mkdir -p /opt/aviary/models /opt/aviary/runs /opt/aviary/.aviary \
    && chown 1000:1000 /opt/aviary/models /opt/aviary/runs /opt/aviary/.aviary

USER 1000:1000
CMD ["python", "-m", "aviary.flows.retrain", "--help"]
