# Herald's worker as a container: `docker build -t herald .`, then run it with the
# configuration mounted at /etc/herald/herald.yaml and its secrets in the environment.
# Scale by running more containers with the same configuration (one consumer group).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HERALD_CONFIG=/etc/herald/herald.yaml \
    HERALD_DATA_DIR=/var/lib/herald \
    HERALD_WEB_PORT=6066

WORKDIR /opt/herald
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY agents ./agents
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /var/lib/herald --create-home herald

USER 10001
VOLUME ["/var/lib/herald"]
EXPOSE 6066

# /health answers while the worker's web server runs (Kubernetes' liveness, too).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HERALD_WEB_PORT', '6066'), timeout=4)"]

ENTRYPOINT ["herald", "worker"]
