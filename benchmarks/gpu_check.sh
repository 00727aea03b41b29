#!/usr/bin/env bash
# The GPU checks in one run (issue 17), for a machine whose python3 has PyTorch with CUDA:
#   1. tests/core/test_cuda.py (the tiled evaluator and bf16 against the CPU, training, a search, a pruned
#      member's fine-tune and latency tables, all on CUDA), without the Kedro test project;
#   2. benchmarks/mask_evaluation.py on CUDA: random LeNet-5 + exit, then the default run's trained model on
#      real validation images when data/ has them.
# Packages that python3 lacks there can be given as wheels in .whl/ (installed into /tmp/site, nothing else
# touched; WHEELS=none skips them). Logs go to $OUT (default /tmp/gpu_check). DEVICE=cpu runs the same steps on the CPU (a dry run).
#   bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
POPULATION=${POPULATION:-128}
TILES=${TILES:-8 16 32 64 128}
mkdir -p "$OUT"
WHEELS=${WHEELS:-.whl}
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=src:.:${PYTHONPATH:-} PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
$PYTHON -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
timeout 300 $PYTHON -m pytest --noconftest -p no:cacheprovider -q -rs tests/core/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" | tail -30
MODEL=data/06_models/multi_exit_model.pt
DATA=data/05_model_input/fashion_mnist_validation.pt
runs=("")
[ -f "$MODEL" ] && [ -f "$DATA" ] && runs+=("--model $MODEL --data $DATA")
for extra in "${runs[@]}"; do
  # shellcheck disable=SC2086
  timeout 240 $PYTHON benchmarks/mask_evaluation.py --device "$DEVICE" --population "$POPULATION" --tiles $TILES \
    --repeats 5 $extra 2>&1 | grep -v Warning | tee -a "$OUT/mask_evaluation.txt" | tail -18
done
