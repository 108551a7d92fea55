#!/bin/sh
# torchspark node set-up: run on every node, head and workers (an HDInsight script action, an
# EMR bootstrap action, a Dataproc initialization action, or a Kubernetes image build step).
#
#   sh torchspark-node-setup.sh [WHEEL]      # WHEEL: a path or URL of torchspark's wheel
#
# Installs torch==2.13.0 and torchspark into the Python that Spark uses (TORCHSPARK_PYTHON, else
# PYSPARK_PYTHON, else python3), then checks the node: CPU instruction sets, glibc, libtorch,
# that the library loads and a tiny model scores. Exits non-zero if the node is not ready.
set -eu
PY=${TORCHSPARK_PYTHON:-${PYSPARK_PYTHON:-python3}}
HERE=$(cd "$(dirname "$0")" && pwd)
WHEEL=${1:-$(ls "$HERE"/torchspark-*.whl 2>/dev/null | head -n 1)}
if [ -z "$WHEEL" ]; then
  echo "usage: $0 WHEEL (no torchspark-*.whl beside this script)" >&2
  exit 2
fi
"$PY" -m pip install "torch==2.13.0" "$WHEEL"
exec "$PY" -m torchspark.node setup
