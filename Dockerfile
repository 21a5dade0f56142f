# Trooper as a container: `trooper serve` on 0.0.0.0:8787, the store on the /data volume.
#
#   docker build -t trooper .
#   docker run -p 8787:8787 -v trooper-data:/data -e TROOPER_ADMIN_TOKEN=... \
#       -e TROOPER_OLLAMA_BASE_URL=http://host.docker.internal:11434 trooper
#
# Listening on 0.0.0.0 exposes the admin API, so serve refuses to start without TROOPER_ADMIN_TOKEN.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY trooper ./trooper
RUN pip install --no-cache-dir . \
    && groupadd --system --gid 10001 trooper \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --create-home trooper

USER 10001:10001
WORKDIR /data
ENV TROOPER_HOST=0.0.0.0 \
    TROOPER_PORT=8787 \
    TROOPER_STORE=/data/trooper.sqlite3 \
    TROOPER_CONFIG=/data/trooper.toml
VOLUME ["/data"]
EXPOSE 8787
ENTRYPOINT ["trooper", "serve"]
