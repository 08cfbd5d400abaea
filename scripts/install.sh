#!/usr/bin/env bash
# Install vidsearch into a virtual environment, with the PyTorch build this machine needs.
#
#   scripts/install.sh [--cpu | --cuda] [--venv DIR] [--extras LIST]
#
# --cpu (the default without an NVIDIA GPU) installs PyTorch's CPU build first, from PyTorch's own index as its
# install guide shows (https://pytorch.org/get-started/locally/): PyPI's Linux torch wheel is the CUDA build, which
# pulls ~20 nvidia-* packages (a 6 GB venv) that a CPU can never use. It then checks that no nvidia-* package came
# in. --cuda (the default when nvidia-smi sees a GPU) leaves torch to PyPI's CUDA build. A torch already installed in
# the venv is kept either way. TORCH_CPU_INDEX names another index (a mirror) for the CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."

build=auto venv=.venv extras=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) build=cpu ;;
    --cuda) build=cuda ;;
    --venv) venv="$2"; shift ;;
    --extras) extras="$2"; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$build" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then build=cuda; else build=cpu; fi
fi
index="${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"

if [ -z "${VIRTUAL_ENV:-}" ] || [ "$(cd "$venv" 2>/dev/null && pwd)" != "$VIRTUAL_ENV" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # shellcheck disable=SC1091
  . "$venv/bin/activate"
fi
python -m pip install -q --upgrade pip

if python -c "import torch" 2>/dev/null; then
  echo "install.sh: keeping the installed torch $(python -c 'import torch; print(torch.__version__)')"
elif [ "$build" = cpu ]; then
  echo "install.sh: installing PyTorch's CPU build from $index"
  retries=()
  # An unreachable index (a machine that only reaches a package mirror) is given up at once, so pip goes on to the
  # other sources configured for it (pip.conf find-links or mirrors) instead of retrying for minutes.
  python - "$index" <<'PY' || { echo "install.sh: $index is not reachable; trying pip's other sources" >&2; retries=(--retries 0); }
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10)
PY
  python -m pip install -q "${retries[@]}" torch --index-url "$index"
fi

target="."
[ -n "$extras" ] && target=".[$extras]"
python -m pip install -q -e "$target"

if [ "$build" = cpu ]; then
  nvidia=$(python -m pip list --format=freeze | grep -i '^nvidia-' || true)
  if [ -n "$nvidia" ]; then
    echo "install.sh: CUDA packages were installed on a CPU install:" >&2
    echo "$nvidia" >&2
    exit 1
  fi
  cuda=$(python -c "import torch; print(torch.version.cuda or '')")
  [ -z "$cuda" ] || { echo "install.sh: torch is a CUDA build ($cuda) on a CPU install" >&2; exit 1; }
fi
size=$(du -sm "$(python -c 'import sys; print(sys.prefix)')" | cut -f1)
echo "install.sh: vidsearch installed in $(python -c 'import sys; print(sys.prefix)') (torch $(python -c 'import torch; print(torch.__version__)'), ${size} MB, no nvidia-* packages: $([ "$build" = cpu ] && echo yes || echo 'not checked, CUDA build'))"
