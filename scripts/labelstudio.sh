#!/usr/bin/env bash
# Label Studio 1.23.2 for local use and for the end-to-end tests, in its own venv outside the repo.
#
#   scripts/labelstudio.sh install        create/reuse the venv (${SAFIRE_LS_VENV:-~/.cache/safire-studio/ls-venv})
#   scripts/labelstudio.sh path           print the label-studio executable (installing first if needed)
#
# The venv is reused while its stamp file matches the pinned version; pip needs PyPI (about 2 min
# and 1 GB the first time). Any failure exits non-zero with the reason: the e2e suite relies on it.
set -euo pipefail

LS_VERSION="${SAFIRE_LS_VERSION:-1.23.2}"
VENV="${SAFIRE_LS_VENV:-${HOME:-/root}/.cache/safire-studio/ls-venv}"
STAMP="$VENV/.safire-ls-$LS_VERSION"
PYTHON="${SAFIRE_LS_PYTHON:-python3}"

quiet_pip() {  # drop pip's warnings about configured local index folders that do not exist
  grep -v "is ignored: it is neither a file nor a directory" || true
}

install() {
  if [ -x "$VENV/bin/label-studio" ] && [ -f "$STAMP" ]; then
    return 0
  fi
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9  # two test runs must not install into the same venv at once
  if [ -x "$VENV/bin/label-studio" ] && [ -f "$STAMP" ]; then
    return 0
  fi
  echo "labelstudio.sh: installing label-studio==$LS_VERSION into $VENV (first time: ~2 min, ~1 GB)" >&2
  local start=$SECONDS
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
      echo "labelstudio.sh: label-studio needs Python >= 3.10 (set SAFIRE_LS_PYTHON)" >&2; exit 1; }
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=23" 2> >(quiet_pip >&2) || true
  if ! "$VENV/bin/python" -m pip install --quiet "label-studio==$LS_VERSION" 2> >(quiet_pip >&2); then
    echo "labelstudio.sh: pip could not install label-studio==$LS_VERSION (is PyPI reachable?)" >&2
    exit 1
  fi
  # (not `label-studio --version`: that initialises a data dir in ~/.local/share and migrates it)
  local got
  got=$("$VENV/bin/python" -c 'import label_studio; print(label_studio.__version__)') || {
    echo "labelstudio.sh: label-studio installed but does not import" >&2; exit 1; }
  if [ "$got" != "$LS_VERSION" ]; then
    echo "labelstudio.sh: installed label-studio $got, expected $LS_VERSION" >&2; exit 1
  fi
  touch "$STAMP"
  echo "labelstudio.sh: installed in $(( SECONDS - start )) s" >&2
}

case "${1:-install}" in
  install) install ;;
  path) install; echo "$VENV/bin/label-studio" ;;
  *) echo "usage: $0 install|path" >&2; exit 2 ;;
esac
