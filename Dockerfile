# safire-studio ML backend for Label Studio.
#
#   docker build -t safire-studio .                               # CPU (default)
#   docker build -t safire-studio:gpu --build-arg DEVICE=cuda .   # CUDA build of torch
#   docker run -p 127.0.0.1:9090:9090 -e LABEL_STUDIO_URL=http://ls:8080 -e LABEL_STUDIO_API_KEY=... \
#       -e BASIC_AUTH_USER=labelstudio -e BASIC_AUTH_PASS=<a long random password> safire-studio
#
# Inside the container the server listens on 0.0.0.0, so it refuses to start without BASIC_AUTH_USER
# and BASIC_AUTH_PASS (enter the same pair in Label Studio: Connect Model > Authentication: Basic
# Authentication) unless SAFIRE_ALLOW_UNAUTHENTICATED=true says otherwise (docs/security.md).
#
# The embedded default model ships inside the image (safire/weights/); mount the official
# safire.pth and set SAFIRE_CHECKPOINT to use it. Fine-tuned versions go to MODEL_DIR (a volume).
# Every setting is an environment variable (README, "Settings").
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG DEVICE=cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first (its own layer): the CPU wheel from PyTorch's CPU index, or the default CUDA wheel.
RUN if [ "$DEVICE" = "cpu" ]; then \
        pip install --index-url "$TORCH_CPU_INDEX" torch==2.14.1 torchvision==0.29.1; \
    elif [ "$DEVICE" = "cuda" ]; then \
        pip install torch==2.14.1 torchvision==0.29.1; \
    else \
        echo "DEVICE must be cpu or cuda, got $DEVICE" >&2; exit 2; \
    fi

COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY pyproject.toml README.md ./
COPY safire ./safire
COPY training ./training
COPY ml_backend ./ml_backend
COPY label_config ./label_config
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 safire \
    && mkdir -p /data/models && chown -R safire /data

USER safire
ENV HOST=0.0.0.0 \
    PORT=9090 \
    MODEL_DIR=/data/models \
    SAFIRE_DEVICE=${DEVICE} \
    SAFIRE_THREADS=2 \
    WORKERS=1 \
    THREADS=8
VOLUME ["/data/models"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s \
    CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT','9090'), timeout=2)"
CMD ["safire", "serve"]
