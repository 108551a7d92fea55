#!/bin/sh
# torchspark node set-up: run on every node, head and workers (an HDInsight script action, an
# EMR bootstrap action, a Dataproc initialization action, a Databricks init script, or a
# Kubernetes image build step). docs/install-node.md.
#
#   sh torchspark-node-setup.sh [--cpu|--gpu] [--import-torch] [--replace-torch] [--dry-run] [WHEEL]
#
# WHEEL: a path or URL of torchspark's wheel (default: the one beside this script).
# --cpu: torch 2.13.0 without its CUDA wheels (the torch wheel, the two CUDA libraries that
#        libtorch_cpu.so links to, torch's pure-Python dependencies: 1.3 GB installed, 550 MB
#        downloaded, instead of --gpu's 4.9 GB and 2.7 GB);
#        the default on a node with no NVIDIA GPU (no /proc/driver/nvidia, no nvidia-smi).
#        --import-torch adds the CUDA libraries that `import torch` in Python needs.
# --gpu: torch 2.13.0 with its CUDA wheels; the default on a node with an NVIDIA GPU.
# A torch of another version is never replaced without --replace-torch; the same version is
# kept. --dry-run says what was found and what would be done, and installs nothing.
#
# Installs into the Python that Spark uses (TORCHSPARK_PYTHON, else PYSPARK_PYTHON, else
# python3): the wheel (with pyarrow and numpy), then `python -m torchspark.node setup`, which
# installs torch and checks the node: CPU instruction sets, glibc, torch and the libraries
# libtorch needs, that the library loads and a tiny model scores. Exits non-zero if the node is
# not ready (1) or a torch of another version is in the way (2).
set -eu
PY=${TORCHSPARK_PYTHON:-${PYSPARK_PYTHON:-python3}}
HERE=$(cd "$(dirname "$0")" && pwd)
MODE=""
FLAGS=""
WHEEL=""
DRY=""
for a in "$@"; do
  case "$a" in
    --cpu | --gpu) MODE=$a ;;
    --import-torch | --replace-torch) FLAGS="$FLAGS $a" ;;
    --dry-run) DRY=1 ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "$0: unknown option $a (see --help)" >&2; exit 2 ;;
    *) WHEEL=$a ;;
  esac
done
if [ -z "$MODE" ]; then
  if [ -e /proc/driver/nvidia ] || command -v nvidia-smi >/dev/null 2>&1; then
    MODE=--gpu
    echo "torchspark node set-up: an NVIDIA GPU driver is here: --gpu (torch with its CUDA wheels)"
  else
    MODE=--cpu
    echo "torchspark node set-up: no NVIDIA GPU here: --cpu (torch without its CUDA wheels)"
  fi
fi
if [ -z "$WHEEL" ]; then
  WHEEL=$(ls "$HERE"/torchspark-*.whl 2>/dev/null | head -n 1)
fi
if [ -z "$WHEEL" ]; then
  echo "usage: $0 [--cpu|--gpu] [--import-torch] [--replace-torch] [--dry-run] WHEEL" >&2
  echo "(no torchspark-*.whl beside this script)" >&2
  exit 2
fi
if [ -n "$DRY" ]; then
  echo "would run: $PY -m pip install $WHEEL"
  if "$PY" -c "import torchspark.node" >/dev/null 2>&1; then
    # shellcheck disable=SC2086  # FLAGS holds separate words
    exec "$PY" -m torchspark.node setup "$MODE" $FLAGS --dry-run
  fi
  # torchspark is not here yet: what torch there is, from its metadata (no import).
  "$PY" - "$MODE" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, distribution
try:
    d = distribution("torch")
    print(f"found: torch {d.version} in {d.locate_file('')} for {sys.executable}")
    same = d.version.split("+")[0] == "2.13.0"
    print("then: keep it" if same else "then: refuse to replace it unless --replace-torch")
except PackageNotFoundError:
    print(f"found: no torch for {sys.executable}")
    print(f"then: install torch 2.13.0 ({sys.argv[1]}), then check the node")
PYEOF
  exit 0
fi
"$PY" -m pip install "$WHEEL"
# shellcheck disable=SC2086  # FLAGS holds separate words
exec "$PY" -m torchspark.node setup "$MODE" $FLAGS
