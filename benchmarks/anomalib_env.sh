#!/usr/bin/env bash
# Build the speed benchmark's own environment: anomalib (whose pins may differ from ours) + this
# package with its export extras (onnxruntime, onnxscript, openvino), so benchmarks/speed.py can time
# both systems, in PyTorch and exported, in one process. Prints the Python to use.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV=.cache/anomalib-venv
if [ ! -x "$ENV/bin/python" ] || ! "$ENV/bin/python" -c "import anomalib, aand_lightning, onnxruntime, onnxscript, openvino" 2>/dev/null; then
  python3 -m venv "$ENV"
  "$ENV/bin/pip" install --quiet --upgrade pip
  "$ENV/bin/pip" install --quiet "torch<=2.14.1" "torchvision<=0.29.1" anomalib
  "$ENV/bin/pip" install --quiet -e ".[export,openvino]"
fi
echo "$ENV/bin/python"
