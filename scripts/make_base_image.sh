#!/usr/bin/env bash
# Make the Docker base image locally, for machines that cannot pull python:3.11-slim-bookworm from a
# registry but reach a Debian mirror: a minimal Debian bookworm root file system (debootstrap,
# minbase) with Debian's Python 3.11, its venv module and the CA certificates, imported with
# `docker import`. Build the backend on it with --build-arg BASE_IMAGE=TAG (or
# `scripts/docker_smoke.sh --base-image TAG`, or SAFIRE_BASE_IMAGE=TAG for docker compose).
#
#   sudo scripts/make_base_image.sh                          # tag safire-base:bookworm
#   sudo scripts/make_base_image.sh --tag my/python:3.11 --mirror http://deb.debian.org/debian
#   sudo scripts/make_base_image.sh --ca /usr/local/share/ca-certificates/proxy.crt
#
# --ca FILE (repeatable) adds a CA certificate the image trusts, and points pip at the system bundle
# (/etc/pip.conf), for networks whose HTTPS goes through an inspecting proxy: the build's pip
# downloads then verify. Needs root, debootstrap (apt-get install debootstrap) and a Docker engine.
set -euo pipefail

TAG=safire-base:bookworm
MIRROR=http://deb.debian.org/debian
SUITE=bookworm
CAS=()
DOCKER=${DOCKER:-docker}

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG=$2; shift 2 ;;
        --mirror) MIRROR=$2; shift 2 ;;
        --ca) CAS+=("$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "make_base_image.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "make_base_image.sh: debootstrap needs root" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "make_base_image.sh: apt-get install debootstrap" >&2; exit 2; }
for ca in ${CAS[@]+"${CAS[@]}"}; do [ -f "$ca" ] || { echo "make_base_image.sh: no such file: $ca" >&2; exit 2; }; done

work=$(mktemp -d /var/tmp/safire-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
start=$(date +%s)
echo "debootstrap $SUITE (minbase + python3, python3-venv, ca-certificates) from $MIRROR ..."
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$root" "$MIRROR" \
    > "$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

if [ ${#CAS[@]} -gt 0 ]; then
    for ca in "${CAS[@]}"; do
        name=$(basename "$ca"); cp "$ca" "$root/usr/local/share/ca-certificates/${name%.*}.crt"
    done
    chroot "$root" update-ca-certificates > /dev/null
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
fi
# what a container does not need: package caches and lists, docs, man pages, locales
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/tmp/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} + 2>/dev/null || true

tar --numeric-owner -C "$root" -c . | "$DOCKER" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --message "debootstrap $SUITE minbase + python3 python3-venv ca-certificates ($MIRROR)" \
    - "$TAG" > /dev/null
"$DOCKER" run --rm "$TAG" python3 -c 'import sys, venv, ensurepip; print("python", sys.version.split()[0])'
size=$("$DOCKER" image inspect --format '{{.Size}}' "$TAG")
echo "made $TAG: $((size / 1000000)) MB, $(( $(date +%s) - start )) s"
