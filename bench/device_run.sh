#!/usr/bin/env bash
# One GPU run of issue 11's benchmarks, every JSON written to $OUT (the device tool returns at most 8 files).
#   on the lent GPU (after ../shared/tools/device-wheels.sh here; carry .whl):  bash bench/device_run.sh
#   on a CPU, as a smoke test of the same script (no install, tiny sizes):      OUT=/tmp/out bash bench/device_run.sh quick
# Stages, each under its own `timeout` so that one failure or overrun loses only its own JSON:
#   train_throughput (ArcFace + Siamese learners vs the plain-loop ceiling, efficientnet_b0 @ 256x512, batch 64),
#   pairs (n = 15,697), lap_epoch (n = 15,697, kaggle preset), fullsize (60 s of synthetic photos, per-epoch costs,
#   T4x2 projection), loader (JPEG and cache img/s at 4 and 16 workers). Expected wall: ~5-6 min on an H100; at most ~8.5.
set -o pipefail
MODE=${1:-gpu}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 BENCH_OUT="$OUT" BENCH_TMP=${BENCH_TMP:-/tmp/whale_bench}
PY=${PY:-python3}
cd "$(dirname "$0")/.."
{
echo "== device_run.sh $MODE: $(date -Is) on $(hostname), $(nproc) cores"
if [ "$MODE" != quick ] && [ -d .whl ]; then   # the install line of ../shared/tools/device-wheels.sh
  rm -rf /tmp/site; python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
  && python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target /tmp/site .whl/lapjv-*.tar.gz \
  && echo "== wheels installed in /tmp/site" || echo "!! wheel install failed: going on with what is installed"
  export PYTHONPATH=/tmp/site:$PWD
else export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}; fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv
$PY -c "import torch, timm, fastai, whale_kernel; from whale_kernel.lap import available_solvers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__, 'fastai', fastai.__version__, 'lap solvers', available_solvers())"

if [ "$MODE" = quick ]; then
  Q=--quick; T_TT=300; T_PAIRS=120; T_LAP=180; T_FULL=240; T_LOAD=180; WHALES=20
  TT_ARGS="--deadline 240"
else
  Q=; T_TT=150; T_PAIRS=60; T_LAP=90; T_FULL=170; T_LOAD=70; WHALES=100
  TT_ARGS="--deadline 115"
fi
stage() {  # stage NAME SECONDS CMD...: run CMD under a timeout, log its wall time and exit status
  local name=$1 secs=$2; shift 2; local t0=$(date +%s)
  echo "== $name (timeout ${secs}s): $*"
  timeout -k 10 "$secs" "$@"; local rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - t0 ))s"
}
DATA=$($PY -c "import sys; sys.path.insert(0, 'bench'); from _util import synth_data; print(synth_data(n_whales=$WHALES))" | tail -1)
echo "== synthetic photos: $DATA ($(ls "$DATA/train" | wc -l) train)"
stage train_throughput $T_TT $PY bench/train_throughput.py $Q --data "$DATA" $TT_ARGS
stage pairs            $T_PAIRS $PY bench/pairs.py $Q
stage lap_epoch        $T_LAP $PY bench/lap_epoch.py $Q --data "$DATA"
stage fullsize         $T_FULL $PY bench/fullsize.py $Q
stage loader           $T_LOAD $PY bench/loader.py $Q --data "$DATA" $([ "$MODE" = quick ] || echo --n 512)
echo "== done $(date -Is); files:"; ls -la "$OUT"
} 2>&1 | tee "$OUT/log.txt"
