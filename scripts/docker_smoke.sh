#!/usr/bin/env bash
# Build the Docker image, run it and query it as Label Studio would; print what it measured
# (image size, start time, memory, request times); remove everything it created, also on failure.
# Not part of `make test` (it needs a Docker engine); `make docker-smoke` runs it.
#
#   scripts/docker_smoke.sh                                  # CPU image: torch from PyTorch's CPU index
#   scripts/docker_smoke.sh --base-image safire-base:bookworm --torch-index-url https://pypi.org/simple
#                                                            # no registry, no PyTorch index (README, Docker)
#   scripts/docker_smoke.sh --device cuda                    # CUDA image on a host with a GPU
#
# Options:
#   --device cpu|cuda         the DEVICE build argument; cuda runs the container with --gpus all (needs
#                             the NVIDIA container toolkit) and checks that the backend serves on cuda
#   --base-image IMAGE        BASE_IMAGE build argument (default: the Dockerfile's python:3.11-slim-bookworm)
#   --torch-index-url URL     TORCH_INDEX_URL build argument (default: the Dockerfile's, per device)
#   --pip-index-url URL       PIP_INDEX_URL build argument (default: the Dockerfile's, PyPI)
#   --image IMAGE             test an image that exists already instead of building one (never removed)
#   --keep-image              keep the image and its build cache (containers and network still go)
#   --health-timeout SECONDS  how long the container may take to become healthy (default 300)
#
# Steps: build (tagged safire-studio:smoke-<run id>), check the image (no test packages, the model
# file once, no source tree or build leftovers), generate a forged image with the image's own
# `safire synth`, serve it from the host (a stand-in for Label Studio's /data/upload/, bound to the
# gateway of a network made for the run), start the container with basic auth, wait for Docker's
# HEALTHCHECK to say "healthy", then /setup with each label_config/*.xml (and once without
# credentials: 401), /predict of the forged image, a click inside its second source and a corrupt
# image, per config; memory before and after; `docker stop` time. Containers, the network and the
# images this run created are removed by id on exit. DOCKER=... picks the docker command.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cpu
BASE_IMAGE=
TORCH_INDEX_URL=
PIP_INDEX_URL=
IMAGE=
KEEP=0
HEALTH_TIMEOUT=300
DOCKER=${DOCKER:-docker}

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --base-image) BASE_IMAGE=$2; shift 2 ;;
        --torch-index-url) TORCH_INDEX_URL=$2; shift 2 ;;
        --pip-index-url) PIP_INDEX_URL=$2; shift 2 ;;
        --image) IMAGE=$2; shift 2 ;;
        --keep-image) KEEP=1; shift ;;
        --health-timeout) HEALTH_TIMEOUT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "docker_smoke.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cpu|cuda) ;; *) echo "docker_smoke.sh: --device must be cpu or cuda" >&2; exit 2 ;; esac
command -v python3 >/dev/null || { echo "docker_smoke.sh: needs python3 on the host" >&2; exit 2; }
$DOCKER info >/dev/null 2>&1 || { echo "docker_smoke.sh: no Docker engine answers ('$DOCKER info' failed)" >&2; exit 2; }

CLIENT=scripts/docker_smoke_client.py
RUN_ID="safire-smoke-$(date +%Y%m%d%H%M%S)-$$"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/safire-smoke.XXXXXX")
TAG=
NETWORK=
SERVER_PID=
CREATED_IMAGES=()
SERVER_CID=

say() { printf '%s\n' "$*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
cid_of() { [ -s "$TMP/$1.cid" ] && cat "$TMP/$1.cid"; }

cleanup() {
    local rc=$? id f left=()
    set +e
    trap - INT TERM
    if [ "$rc" != 0 ] && [ -n "$SERVER_CID" ]; then
        say "--- last 40 log lines of the container ---"
        $DOCKER logs --tail 40 "$SERVER_CID" 2>&1
        say "---"
    fi
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    for f in "$TMP"/*.cid; do
        [ -s "$f" ] || continue
        id=$(cat "$f")
        if $DOCKER inspect "$id" >/dev/null 2>&1; then
            $DOCKER rm -f -v "$id" >/dev/null && say "removed container ${id:0:12}"
        fi
    done
    if [ -n "$NETWORK" ]; then
        $DOCKER network rm "$NETWORK" >/dev/null && say "removed network ${NETWORK:0:12}"
    fi
    if [ "$KEEP" = 0 ] && [ ${#CREATED_IMAGES[@]} -gt 0 ]; then
        # our tag first (the image and its untagged parents go with it), then whatever this run's
        # build created that is still there (the build stage of a multi-stage build), newest first
        [ -n "$TAG" ] && $DOCKER rmi "$TAG" >/dev/null 2>&1
        for ((i = ${#CREATED_IMAGES[@]} - 1; i >= 0; i--)); do
            id=${CREATED_IMAGES[$i]}
            $DOCKER image inspect "$id" >/dev/null 2>&1 && $DOCKER rmi "$id" >/dev/null 2>&1
        done
        for id in "${CREATED_IMAGES[@]}"; do
            $DOCKER image inspect "$id" >/dev/null 2>&1 && left+=("$id")
        done
        say "removed $((${#CREATED_IMAGES[@]} - ${#left[@]})) of the ${#CREATED_IMAGES[@]} image(s) this run's build created$([ ${#left[@]} -gt 0 ] && echo "; still there (in use elsewhere?): ${left[*]}")"
    elif [ "$KEEP" = 1 ] && [ -n "$TAG" ]; then
        say "kept image $TAG (--keep-image)"
    fi
    rm -rf "$TMP"
    if [ "$rc" = 0 ]; then say "docker smoke: PASSED"; else say "docker smoke: FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# -- 0. on cuda: can this engine give a container a GPU at all? ----------------------------------------
if [ "$DEVICE" = cuda ]; then
    probe=${IMAGE:-${BASE_IMAGE:-python:3.11-slim-bookworm}}
    if ! $DOCKER run --rm --cidfile "$TMP/gpu-probe.cid" --network none --gpus all "$probe" true; then
        say "docker_smoke.sh: '$DOCKER run --gpus all' failed: --device cuda needs an NVIDIA GPU, its driver and the" \
            "NVIDIA container toolkit on the host (nvidia-ctk runtime configure --runtime=docker)" >&2
        exit 1
    fi
fi

# -- 1. build -----------------------------------------------------------------------------------------
if [ -n "$IMAGE" ]; then
    say "== using existing image $IMAGE (not built, not removed)"
else
    TAG="safire-studio:smoke-${RUN_ID#safire-smoke-}"
    args=(--build-arg "DEVICE=$DEVICE")
    [ -n "$BASE_IMAGE" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
    [ -n "$TORCH_INDEX_URL" ] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
    [ -n "$PIP_INDEX_URL" ] && args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
    say "== build $TAG (DEVICE=$DEVICE, BASE_IMAGE=${BASE_IMAGE:-default}, TORCH_INDEX_URL=${TORCH_INDEX_URL:-default})"
    $DOCKER images -aq --no-trunc | sort -u > "$TMP/images.before"
    t=$(now)
    set +e
    $DOCKER build --force-rm --iidfile "$TMP/iid" -t "$TAG" "${args[@]}" . > "$TMP/build.log" 2>&1
    build_rc=$?
    set -e
    $DOCKER images -aq --no-trunc | sort -u > "$TMP/images.after"
    mapfile -t CREATED_IMAGES < <(comm -13 "$TMP/images.before" "$TMP/images.after")
    grep -E '^(Step [0-9]+/[0-9]+ : (FROM|RUN pip|RUN set)|torch from)' "$TMP/build.log" | cut -c1-150 || true
    if [ "$build_rc" != 0 ]; then
        say "--- build failed; last 40 lines ---"; tail -40 "$TMP/build.log"; exit 1
    fi
    BUILD_S=$(since "$t")
    IMAGE=$TAG
    say "built in $BUILD_S s ($(grep -c '^ ---> Using cache' "$TMP/build.log" || true) cached steps)"
fi
IMAGE_ID=$($DOCKER image inspect --format '{{.Id}}' "$IMAGE")
IMAGE_BYTES=$($DOCKER image inspect --format '{{.Size}}' "$IMAGE")
IMAGE_GB=$(python3 -c "print(f'{int(\"$IMAGE_BYTES\") / 1e9:.2f}')")
say "image $IMAGE ${IMAGE_ID:7:12}: $IMAGE_GB GB ($IMAGE_BYTES bytes)"
say "layers (newest first):"
$DOCKER history --format '  {{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c1-110 | grep -v -E '^  0B' || true

# -- 2. what is in the image ----------------------------------------------------------------------------
say "== image contents"
$DOCKER run --rm --cidfile "$TMP/contents.cid" --network none "$IMAGE" python -c '
import hashlib, importlib.util, os, sys, sysconfig
from collections import defaultdict
problems = []
for mod in ("pytest", "_pytest", "pluggy", "label_studio_sdk"):
    if importlib.util.find_spec(mod) is not None:
        problems.append(f"test package {mod} is installed")
big = defaultdict(list)
weights, leftovers, inodes = [], [], set()
for root, dirs, files in os.walk("/"):
    if root in ("/proc", "/sys", "/dev"):
        dirs[:] = []
        continue
    for d in dirs:
        if d.endswith(".egg-info") or os.path.join(root, d) in ("/src", "/app", "/build", "/opt/venv/build",
                                                                 "/root/.cache", "/home/safire/.cache"):
            leftovers.append(os.path.join(root, d))
    for f in files:
        p = os.path.join(root, f)
        if os.path.islink(p):
            continue
        if f.endswith(".pt") and "/safire/weights/" in p:
            weights.append(p)
        try:
            st = os.stat(p)
        except OSError:
            continue
        if st.st_size >= 1 << 20 and (st.st_dev, st.st_ino) not in inodes:  # a hard link is no copy
            inodes.add((st.st_dev, st.st_ino))
            big[st.st_size].append(p)
dups = []
for size, paths in big.items():
    if len(paths) > 1:
        by_hash = defaultdict(list)
        for p in paths:
            by_hash[hashlib.sha1(open(p, "rb").read()).hexdigest()].append(p)
        dups += [(size, ps) for ps in by_hash.values() if len(ps) > 1]
if len(weights) != 1:
    problems.append(f"model files: {weights} (expected one)")
if leftovers:
    problems.append(f"build leftovers: {leftovers}")
site = sysconfig.get_paths()["purelib"]
groups = defaultdict(int)
for entry in os.listdir(site):
    p = os.path.join(site, entry)
    total = os.path.getsize(p) if os.path.isfile(p) else sum(
        os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(p) for f in fs if not os.path.islink(os.path.join(r, f)))
    name = entry.split("-")[0].split(".")[0].lower()
    key = "nvidia-* (CUDA libraries)" if name.startswith(("nvidia", "cuda")) else name if name in ("torch", "triton", "torchvision") else "everything else"
    groups[key] += total
venv = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk("/opt/venv") for f in fs if not os.path.islink(os.path.join(r, f)))
print(f"  /opt/venv {venv / 1e9:.2f} GB: " + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sorted(groups.items(), key=lambda kv: -kv[1])))
print(f"  model file (once): {weights[0] if len(weights) == 1 else weights}")
tests = "FOUND" if any("test package" in p for p in problems) else "none"
print(f"  test packages: {tests}; build leftovers: {leftovers or None}")
wheels = dups and all("/site-packages/" in q for _, ps in dups for q in ps)
print(f"  copies of files of 1 MiB or more: {len(dups)} group(s)"
      + (", all as the installed wheels ship them (a wheel cannot hold symlinks)" if wheels else "") + "".join(
    f"\n    {s / 1e6:.1f} MB x {len(ps)}: {ps}" for s, ps in dups[:10]))
for p in problems:
    print("  PROBLEM:", p)
sys.exit(1 if problems else 0)
'

# -- 3. a forged image (made by the image itself) and the host's stand-in for Label Studio ---------------
say "== test images"
mkdir -p "$TMP/www"
$DOCKER run --rm --cidfile "$TMP/synth.cid" --network none --user "$(id -u):$(id -g)" -e HOME=/tmp \
    -e SAFIRE_PHOTO_POOL=bundled -v "$TMP/www:/out" "$IMAGE" sh -c '
safire synth --out /out/ds --n 1 --sources 3 --seed 7 --split val --size-min 640 --size-max 800 --quiet &&
python - <<EOF
import glob, json
import numpy as np
from PIL import Image
from scipy import ndimage
name = sorted(glob.glob("/out/ds/meta/*.json"))[0]
meta = json.load(open(name))
src = np.array(Image.open(name.replace("/meta/", "/sources/").replace(".json", ".png")))
inside = ndimage.distance_transform_edt(src == 1)
y, x = np.unravel_index(int(np.argmax(inside)), inside.shape)
h, w = src.shape
json.dump({"image": glob.glob("/out/ds/images/*")[0].replace("/out/", ""), "width": w, "height": h,
           "num_sources": meta["num_sources"], "forged_fraction": float(((src >= 1) & (src != 255)).mean()),
           "click_x": 100 * (x + 0.5) / w, "click_y": 100 * (y + 0.5) / h}, open("/out/meta.json", "w"))
EOF'
FORGED="$TMP/www/$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['image'])" "$TMP/www/meta.json")"
python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print(f\"  forged: {m['width']}x{m['height']}, {m['num_sources']} sources, {100*m['forged_fraction']:.0f} % forged pixels (safire synth in the image)\")" "$TMP/www/meta.json"
{ printf '\211PNG\r\n\032\n'; head -c 4096 /dev/urandom; } > "$TMP/www/corrupt.png"
say "  corrupt: PNG signature + 4096 random bytes"

NETWORK=$($DOCKER network create "$RUN_ID")
GATEWAY=$($DOCKER network inspect --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}' "$NETWORK")
TOKEN="smoke-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
python3 "$CLIENT" serve --bind "$GATEWAY" --port-file "$TMP/port" --log "$TMP/uploads.log" --token "$TOKEN" \
    --route "/data/upload/1/forged.png=$FORGED" --route "/data/upload/1/corrupt.png=$TMP/www/corrupt.png" &
SERVER_PID=$!
for _ in $(seq 50); do [ -s "$TMP/port" ] && break; sleep 0.1; done
[ -s "$TMP/port" ] || { say "the host file server did not start" >&2; exit 1; }
LS_URL="http://$GATEWAY:$(cat "$TMP/port")"
say "  served from the host at $LS_URL/data/upload/1/ (network $RUN_ID, gateway $GATEWAY)"

# -- 4. run and wait for the HEALTHCHECK -----------------------------------------------------------------
say "== run"
PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
gpu=()
[ "$DEVICE" = cuda ] && gpu=(--gpus all)
T0=$(now)
BASIC_AUTH_PASS=$PASSWORD $DOCKER run -d --cidfile "$TMP/server.cid" --name "$RUN_ID" --network "$NETWORK" \
    -p 127.0.0.1::9090 -e BASIC_AUTH_USER=smoke -e BASIC_AUTH_PASS -e LABEL_STUDIO_URL="$LS_URL" \
    -e LABEL_STUDIO_API_KEY="$TOKEN" ${gpu[@]+"${gpu[@]}"} "$IMAGE" > /dev/null
SERVER_CID=$(cid_of server)
PORT=$($DOCKER port "$SERVER_CID" 9090/tcp | sed -n '1s/.*://p')
URL="http://127.0.0.1:$PORT"
say "  container ${SERVER_CID:0:12} on $URL (published on loopback only)"
WAIT_JSON=$(python3 "$CLIENT" wait --docker "$DOCKER" --container "$SERVER_CID" --url "$URL/health" \
    --t0 "$T0" --timeout "$HEALTH_TIMEOUT")
FIRST_HEALTH=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['first_health_s'])" "$WAIT_JSON")
HEALTHY=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['healthy_s'])" "$WAIT_JSON")
say "  first /health 200 after $FIRST_HEALTH s; Docker's HEALTHCHECK healthy after $HEALTHY s"
$DOCKER logs "$SERVER_CID" > "$TMP/server.log" 2>&1
grep 'listening on' "$TMP/server.log" | sed -n '1s/^/  /p' | cut -c1-260

memory() {  # the container's memory (docker stats) and the resident memory of its processes
    local stats
    stats=$($DOCKER stats --no-stream --format '{{.MemUsage}}' "$SERVER_CID" | sed 's| / .*||')
    $DOCKER exec "$SERVER_CID" python -c '
import glob, os
parts = []
for f in sorted(glob.glob("/proc/[0-9]*/status"), key=lambda f: int(f.split("/")[2])):
    pid = int(f.split("/")[2])
    if pid == os.getpid():
        continue
    try:
        st = dict(l.split(":", 1) for l in open(f) if ":" in l)
    except OSError:
        continue
    if "VmRSS" in st:
        role = "master" if pid == 1 else "worker"
        rss, hwm = (int(st[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM"))
        parts.append(f"{role} {rss} MiB (peak {hwm})")
print("; RSS of " + ", ".join(parts))
' | sed "s|^|$stats (docker stats)|"
}
MEM_IDLE=$(memory)
say "  memory after start: $MEM_IDLE"

# -- 5. the requests Label Studio makes -------------------------------------------------------------------
say "== requests"
expect=()
[ "$DEVICE" = cuda ] && expect=(--expect-device cuda)
SMOKE_PASSWORD=$PASSWORD python3 "$CLIENT" check --url "$URL" --user smoke --configs label_config/*.xml \
    --meta "$TMP/www/meta.json" --image-path /data/upload/1/forged.png --corrupt-path /data/upload/1/corrupt.png \
    --upload-log "$TMP/uploads.log" ${expect[@]+"${expect[@]}"} | grep -v '^SUMMARY '
MEM_AFTER=$(memory)
say "  memory after the requests: $MEM_AFTER"
$DOCKER logs "$SERVER_CID" > "$TMP/server.log" 2>&1
if grep -q 'Traceback' "$TMP/server.log"; then
    say "the container logged a traceback:"; grep -A20 'Traceback' "$TMP/server.log" | head -40; exit 1
fi
HEALTH_STATUS=$($DOCKER inspect --format '{{.State.Health.Status}}' "$SERVER_CID")
[ "$HEALTH_STATUS" = healthy ] || { say "health after the requests: $HEALTH_STATUS" >&2; exit 1; }

t=$(now)
$DOCKER stop -t 30 "$SERVER_CID" > /dev/null
STOP_S=$(since "$t")
EXIT_CODE=$($DOCKER inspect --format '{{.State.ExitCode}}' "$SERVER_CID")
say "  docker stop: $STOP_S s, exit code $EXIT_CODE"

say "== figures"
say "  engine:     $($DOCKER version --format 'client {{.Client.Version}}, server {{.Server.Version}}') ($(command -v "${DOCKER%% *}"))"
if [ -n "$TAG" ]; then
    say "  image:      $IMAGE_GB GB ($IMAGE_BYTES bytes; DEVICE=$DEVICE, BASE_IMAGE=${BASE_IMAGE:-default}, TORCH_INDEX_URL=${TORCH_INDEX_URL:-default}), built in $BUILD_S s"
else
    say "  image:      $IMAGE_GB GB ($IMAGE_BYTES bytes; $IMAGE, not built by this run)"
fi
INTERVAL_NS=$($DOCKER image inspect --format '{{json .Config.Healthcheck.Interval}}' "$IMAGE")
say "  start:      /health 200 after $FIRST_HEALTH s, Docker healthy after $HEALTHY s (HEALTHCHECK every $((INTERVAL_NS / 1000000000)) s)"
say "  memory:     idle: $MEM_IDLE"
say "              after the requests: $MEM_AFTER"
say "  stop:       $STOP_S s"
