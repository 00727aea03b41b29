#!/usr/bin/env bash
# Issue 11: the full-width ResNet-20 (16-32-64) `prune` run on a GPU, i.e. conf/resnet with what its CPU budget
# cut back: more dense epochs, exits and fine-tunes on the whole training split, a larger search on more
# validation images, 2 candidates per budget and 2 fine-tune seeds. The same run as a user types it:
#   kedro run --pipeline=prune --env=resnet --params "$PARAMS"   (PARAMS below)
# For a lent machine that lacks the packages or the data:
#   WHEELS: a folder of wheels installed into /tmp/site (nothing else touched);
#   RAW_XZ: a folder with Fashion-MNIST's four IDX files as .xz, unpacked to /usr/share/datasets/fashion-mnist.
# The GPU tests (tests/core/test_cuda.py) run beside it when TEST_CUDA=1. LIMIT (seconds) stops the run early;
# whatever it had written is packed all the same into $OUT/resnet_gpu.tgz with the log.
#   bash benchmarks/resnet_gpu.sh
set -u
OUT=${OUT:-/tmp/resnet_gpu}
LIMIT=${LIMIT:-3600}
mkdir -p "$OUT"
WHEELS=${WHEELS:-}
if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -n "${RAW_XZ:-}" ]; then
  mkdir -p /usr/share/datasets/fashion-mnist
  python3 - "$RAW_XZ" <<'EOF' || exit 1
import lzma, pathlib, shutil, sys
for packed in pathlib.Path(sys.argv[1]).glob("*.xz"):
    with lzma.open(packed) as src, open(f"/usr/share/datasets/fashion-mnist/{packed.stem}", "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
fi
export COLUMNS=200 PYTHONPATH=src:.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 DO_NOT_TRACK=1 KEDRO_DISABLE_TELEMETRY=1
PARAMS=${PARAMS:-"train_dense.training.epochs=30,build_exits.training.epochs=3,build_exits.training.train_subset=null,\
finetune.training.epochs=6,finetune.training.train_subset=null,mask_search.validation_subset=5000,\
mask_search.search.pop_size=32,mask_search.search.generations=16,mask_search.candidates_per_budget=2,\
report.seeds=2,baselines.criteria=[l1]"}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
if [ "${TEST_CUDA:-0}" = 1 ]; then
  timeout 300 python3 -m pytest --noconftest -p no:cacheprovider -q -rs tests/core/test_cuda.py >"$OUT/test_cuda.log" 2>&1 &
fi
echo "params: $PARAMS" | tee "$OUT/kedro.log"
start=$(date +%s)
timeout "$LIMIT" python3 -m kedro run --pipeline=prune --env=resnet --params "$PARAMS" >>"$OUT/kedro.log" 2>&1
echo "kedro rc $? after $(($(date +%s) - start)) s" | tee -a "$OUT/kedro.log"
wait
tail -5 "$OUT/test_cuda.log" 2>/dev/null
grep -E "Completed node|Running node|accuracy|rc " "$OUT/kedro.log" | tail -40
tar czf "$OUT/resnet_gpu.tgz" --exclude='*/01_raw/*' --exclude='*/05_model_input/*' data/resnet mlflow.db 2>/dev/null
ls -la "$OUT"
