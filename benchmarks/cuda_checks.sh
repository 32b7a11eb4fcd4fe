#!/usr/bin/env bash
# The CUDA checks, as one script for a machine with a GPU (meant to take about 8 minutes on one
# H100: a target, not yet a measurement; no internet needed):
#   (a) build eval_lib in place and run the CUDA-relevant tests (numerics, losses, evaluation,
#       the fast path's checks and fallbacks);
#   (b) ResNet-50 at 256x128 on Market-sized synthetic data (12,936 training images), CORE for
#       2 epochs (SELF, then co-refining after the lr decay), --numerics fast vs released, same
#       seed: loss, label precision, rank-1 and mAP side by side (from each run's metrics.json),
#       the fast settings that failed their check and fell back (normally none), and the disk a
#       run takes (last.pt, best.pt, the image cache);
#   (c) seconds per epoch and peak GPU memory of baseline / SELF / CORE under both numerics
#       (bench_train.py, --steps batches scaled to a whole epoch), then the measured equivalents
#       of README's time, memory and disk estimates (estimate_cost.py with the measured speeds).
# Usage: bash benchmarks/cuda_checks.sh [OUTPUT_DIR]. Packages missing on the GPU machine
# (e.g. tensorboardX) can travel as wheels in .whl/ (installed from there when present).
set -euo pipefail
out=${1:-cuda_checks_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" > /dev/null; then
  python -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -2 \
  || python setup.py -q build_ext --inplace
python -c "import torch, eval_lib; print(torch.__version__, torch.cuda.get_device_name(0), 'eval_lib compiled:', eval_lib.CYTHON_AVAILABLE)"
# (a)
python -m pytest -q -x tests/test_losses.py tests/test_eval_lib.py tests/test_eval_utils.py \
  tests/test_released_pipeline.py tests/test_fast_path.py 2>&1 | tail -3
# (b)
python - <<'EOF'
from pathlib import Path
import sys
sys.path.insert(0, ".")
from benchmarks.bench_train import synthetic_data
synthetic_data(Path("bench_data"), "market", 16)
EOF
common=(--data_dir bench_data --output_dir "$out/res" --pretrained none --epochs 2
        --milestones 1 --stage1_epochs 0 --eval_every 1 --workers 12 --seed 1)
for mode in fast released; do
  python train_core.py "${common[@]}" --numerics "$mode" --run_name "core_$mode" 2>&1 \
    | tee "$out/core_$mode.log" | grep -E "^(numerics|torch|fallback|epoch|  test)"
done
python - "$out/res" <<'EOF'
import json, sys
from pathlib import Path
print(f"\n{'':9s}{'epoch':>6s}{'loss1':>8s}{'loss2':>8s}{'prec1':>7s}{'prec2':>7s}"
      f"{'rank-1':>8s}{'mAP':>7s}{'s/epoch':>9s}")
runs = {mode: json.loads((Path(sys.argv[1]) / f"core_{mode}" / "metrics.json").read_text())
        for mode in ("fast", "released")}
for mode, m in runs.items():
    for h in m["history"]:
        n1, n2 = h["networks"]
        print(f"{mode:9s}{h['epoch']:6d}{n1['loss']:8.3f}{n2['loss']:8.3f}"
              f"{n1['label_precision']:7.3f}{n2['label_precision']:7.3f}"
              f"{100 * h['rank1']:8.2f}{100 * h['mAP']:7.2f}{h['epoch_time_s']:9.1f}")
for mode, m in runs.items():
    fallbacks = m["numerics"].get("fallbacks", [])
    print(f"fallbacks ({mode}): " + ("none" if not fallbacks else "; ".join(
        f"{f['setting']} ({f['reason']})" for f in fallbacks)))
EOF
echo "disk of one CORE run (ResNet-50, 751 classes): last.pt" \
  "$(du -h "$out/res/core_fast/last.pt" | cut -f1), best.pt" \
  "$(du -h "$out/res/core_fast/best.pt" | cut -f1); the image cache" \
  "$(du -sh bench_data/market/.cache | cut -f1)"
# (c)
python benchmarks/bench_train.py --device cuda --workers 12 --steps 120 --warmup 5 \
  --synthetic_dir bench_data 2>&1 | tee "$out/bench_cuda.log" | grep -v "^\["
grep -E "^\[fast\] (baseline|self|core|test):" "$out/bench_cuda.log"
train_img_s=$(sed -n 's|^\[fast\] baseline: \([0-9]*\) img/s.*|\1|p' "$out/bench_cuda.log")
eval_img_s=$(sed -n 's|^\[fast\] test: .* \([0-9]*\) forward img/s.*|\1|p' "$out/bench_cuda.log")
peak_gb=$(sed -n 's|^\[fast\] core: .*peak \([0-9.]*\) GB.*|\1|p' "$out/bench_cuda.log")
echo
echo "measured equivalents of README's estimates (--numerics fast, this GPU):"
python benchmarks/estimate_cost.py --train_img_s "$train_img_s" --eval_img_s "$eval_img_s" \
  --peak_gb "$peak_gb" | tee "$out/estimate_measured.txt"
