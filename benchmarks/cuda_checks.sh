#!/usr/bin/env bash
# The CUDA checks, as one script for a machine with a GPU (about 10 minutes on one H100):
#   1. build eval_lib in place (offline: no build isolation) and run the CPU-sized tests on it;
#   2. the demo on CUDA with a reduced epoch count;
#   3. the training benchmark at Market size (12,936 synthetic images, ResNet-50, 256x128,
#      batch 32): released-style vs fast path, baseline / SELF / CORE, a whole epoch each.
# Usage: bash benchmarks/cuda_checks.sh [OUTPUT_DIR]. tensorboardX must be installed (carry
# its wheel to a machine without internet: pip download tensorboardX).
set -euo pipefail
out=${1:-cuda_checks_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -2 \
  || python setup.py -q build_ext --inplace
python -c "import torch, eval_lib; print(torch.__version__, torch.cuda.get_device_name(0), 'eval_lib compiled:', eval_lib.CYTHON_AVAILABLE)"
python -m pytest -q -x tests/test_losses.py tests/test_eval_lib.py 2>&1 | tail -3
python train_core.py --demo --device cuda --epochs 8 --milestones 5 7 --stage1_epochs 5 \
  --output_dir "$out/res" 2>&1 | tee "$out/demo_cuda.log" | grep -E "^(epoch|  test|done|      )"
python benchmarks/bench_train.py --device cuda --workers 8 --steps 0 --synthetic_dir "$out/data" \
  2>&1 | tee "$out/bench_cuda.log"
