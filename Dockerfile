# fc-knowledge-distillation as a FeatureCloud app image (the platform's standard layout):
# supervisord runs nginx and `python -u /app/main.py`; nginx forwards port 9000 to the
# FeatureCloud API (127.0.0.1:5000/api/) and port 9001 to the web UI (/web/).
#
#   docker build -t fc-knowledge-distillation .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t fc-knowledge-distillation:cpu .
#
# TORCH_INDEX_URL empty (default): torch/torchvision from PyPI, the CUDA builds that also run
# on CPU (`device: auto` uses a GPU passed with `docker run --gpus all`). Set it to a CPU-only
# wheel index to get the same pinned versions as `+cpu` builds, several GB smaller.
FROM python:3.11-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

LABEL org.opencontainers.image.title="fc-knowledge-distillation" \
      org.opencontainers.image.description="FeatureCloud app: federated knowledge distillation for image classification"

# No bytecode written at run time: the app imports the user's model .py files from
# /mnt/input, and a __pycache__ there would pollute (or fail on a read-only) input mount.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# nginx is the only system package (supervisord comes from PyPI below, so the image holds a
# single Python). No version pin: Debian replaces a package's version in the mirror with each
# security update, so a pinned build breaks within weeks; the base image fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/*

# Dependencies in their own layer, before the code, so code changes rebuild in seconds.
ARG TORCH_INDEX_URL=""
COPY requirements.txt /app/requirements.txt
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        grep -E '^(torch|torchvision)==' /app/requirements.txt \
          | xargs pip install --no-cache-dir --index-url "$TORCH_INDEX_URL"; \
    fi \
 && pip install --no-cache-dir -r /app/requirements.txt supervisor==4.3.0

COPY server_config/supervisord.conf /supervisord.conf
COPY server_config/nginx /etc/nginx/sites-available/default
COPY server_config/docker-entrypoint.sh /entrypoint.sh
COPY . /app
WORKDIR /app

EXPOSE 9000 9001
ENTRYPOINT ["sh", "/entrypoint.sh"]
