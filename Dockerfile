# safire-studio ML backend for Label Studio.
#
#   docker build -t safire-studio .                               # CPU torch from PyTorch's CPU index
#   docker build -t safire-studio:gpu --build-arg DEVICE=cuda .   # CUDA torch (PyPI's default wheel)
#   docker run -p 127.0.0.1:9090:9090 -e LABEL_STUDIO_URL=http://ls:8080 -e LABEL_STUDIO_API_KEY=... \
#       -e BASIC_AUTH_USER=labelstudio -e BASIC_AUTH_PASS=<a long random password> safire-studio
#   (CUDA: docker run --gpus all ... safire-studio:gpu; needs the NVIDIA container toolkit on the host)
#
# Build arguments (all optional):
#   BASE_IMAGE       a Debian bookworm image with Python 3.11 and its venv module
#                    (default python:3.11-slim-bookworm; scripts/make_base_image.sh makes one locally
#                    with debootstrap for machines without registry access)
#   DEVICE           cpu (default) or cuda: which torch build, and the default SAFIRE_DEVICE
#   TORCH_INDEX_URL  the index torch/torchvision come from; default: https://download.pytorch.org/whl/cpu
#                    for cpu, PIP_INDEX_URL for cuda. A mirror of either, or https://pypi.org/simple
#                    where PyTorch's index is unreachable (PyPI's torch is a CUDA build: a much larger
#                    image that still runs on the CPU)
#   PIP_INDEX_URL    the index of every other package (default https://pypi.org/simple)
#
# Two stages: `build` installs the runtime requirements (requirements.txt, no test tools) and the
# project into /opt/venv; the runtime image copies only that venv onto a fresh base, so no pip cache,
# source tree, build/ or *.egg-info is left behind and the model file is in the image once (inside
# the installed package). Works with the classic builder (Debian's docker.io 20.10) and BuildKit.
#
# Inside the container the server listens on 0.0.0.0, so it refuses to start without BASIC_AUTH_USER
# and BASIC_AUTH_PASS (enter the same pair in Label Studio: Connect Model > Authentication: Basic
# Authentication) unless SAFIRE_ALLOW_UNAUTHENTICATED=true says otherwise (docs/security.md).
#
# The embedded default model ships inside the image (safire/weights/); mount the official
# safire.pth and set SAFIRE_CHECKPOINT to use it. Fine-tuned versions go to MODEL_DIR (a volume).
# Every setting is an environment variable (README, "Settings").
ARG BASE_IMAGE=python:3.11-slim-bookworm

# ------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build

ARG DEVICE=cpu
ARG TORCH_INDEX_URL=
ARG PIP_INDEX_URL=https://pypi.org/simple

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch and torchvision first (their own layer of the build stage), at the versions requirements.txt
# pins, from TORCH_INDEX_URL; the rest then finds them installed.
COPY requirements.txt /tmp/requirements.txt
RUN set -eu; \
    case "$DEVICE" in \
        cpu)  index="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" ;; \
        cuda) index="${TORCH_INDEX_URL:-$PIP_INDEX_URL}" ;; \
        *)    echo "DEVICE must be cpu or cuda, got '$DEVICE'" >&2; exit 2 ;; \
    esac; \
    grep -E '^(torch|torchvision)==' /tmp/requirements.txt > /tmp/torch.txt; \
    echo "torch from $index: $(tr '\n' ' ' < /tmp/torch.txt)"; \
    pip install --index-url "$index" -r /tmp/torch.txt
RUN pip install -r /tmp/requirements.txt

# the project itself, as an installed (non-editable) package: the weights land in site-packages once
COPY pyproject.toml README.md /src/
COPY safire /src/safire
COPY training /src/training
COPY ml_backend /src/ml_backend
RUN pip install --no-deps /src \
    && python -c "import safire.build as b; assert b.DEFAULT_CHECKPOINT.is_file(), b.DEFAULT_CHECKPOINT"

# ------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime

ARG DEVICE=cpu

RUN useradd --create-home --uid 1000 safire \
    && mkdir -p /data/models \
    && chown safire /data/models

# one layer: the virtual environment (owned by root, read-only to the server's user)
COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=9090 \
    MODEL_DIR=/data/models \
    SAFIRE_DEVICE=${DEVICE} \
    SAFIRE_THREADS=2 \
    WORKERS=1 \
    THREADS=8

USER safire
WORKDIR /data
VOLUME ["/data/models"]
EXPOSE 9090
# /health answers once the worker has loaded the model (it needs no credentials); a failing check
# during the first 120 s does not count, the first success marks the container healthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090'), timeout=4)"]
CMD ["safire", "serve"]
