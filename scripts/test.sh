#!/usr/bin/env bash
# The test command: set up what the tests need on this machine, then run them.
#
#   scripts/test.sh [pytest arguments]        e.g. scripts/test.sh -m "not slow and not browser"
#
# 1. System packages: Debian's Chromium (the browser tests), docker-compose (validates docker-compose.yml; no Docker
#    engine is needed), PostgreSQL (the migration tests start their own server), festival with its kal voice (speech
#    for the speech expert's tests) and DejaVu fonts (text burnt into frames for the text expert's). Installed with
#    apt-get when run as root; otherwise the script stops with the exact command to run.
# 2. Python: the active virtual environment, or .venv (created if missing), gets vidsearch with its test extras and,
#    if no torch is installed yet, PyTorch's CPU build (scripts/install.sh).
# 3. python -m pytest, with the arguments given. .ci/run runs exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || packages+=(chromium)
command -v docker-compose >/dev/null 2>&1 || packages+=(docker-compose)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)
command -v text2wave >/dev/null 2>&1 || packages+=(festival)
[ -d /usr/share/festival/voices/english/kal_diphone ] || packages+=(festvox-kallpc16k)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || packages+=(fonts-dejavu-core)
if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${packages[@]}"
  else
    echo "test.sh: the tests need system packages that are missing: ${packages[*]}. Install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${packages[*]}" >&2
    exit 2
  fi
fi

scripts/install.sh --venv "${VIRTUAL_ENV:-.venv}" --extras test
# shellcheck disable=SC1091
[ -n "${VIRTUAL_ENV:-}" ] || . .venv/bin/activate
python -m pytest "$@"
