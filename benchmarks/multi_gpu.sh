#!/usr/bin/env bash
# Issue 11's measurements on one machine with 8 GPUs, one after another, each bounded in time; logs and JSON
# results go to OUT_DIR. Run from the project's root with the project importable.
#
#   benchmarks/multi_gpu.sh OUT_DIR                  # all steps, in this order
#   benchmarks/multi_gpu.sh OUT_DIR scaling          # only these
#
# Steps: scaling (benchmarks/train_scaling.py: depth 12, 524,288 tokens per step, 50 steps on 1, 2, 4 and 8
# GPUs: tokens/s, MFU and memory per GPU, scaling efficiency, the loss curves against the 1-GPU run's),
# overhead (benchmarks/study_overhead.py on a study of 8 one-GPU and 2 four-GPU cells: GPU-busy fraction
# and per-cell overhead; `nanostudy run` places the cells). NVLink SHARP and multicast stay off, for this
# script and every process it starts. GPT2_DIR defaults to ../shared's copy.
set -uo pipefail
out=${1:?usage: benchmarks/multi_gpu.sh OUT_DIR [step ...]}
shift
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(scaling overhead)
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
gpt2=${GPT2_DIR:-../shared/tokenizers/gpt2}
py=${PYTHON:-python}

run_step() {  # name, seconds, command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout --signal=TERM --kill-after=20 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - t0)) s (log: $out/$name.log)"
  tail -n 25 "$out/$name.log"
}

nvidia-smi --query-gpu=index,name,memory.total --format=csv >"$out/gpus.csv" 2>&1
for step in "${steps[@]}"; do
  case $step in
    scaling)
      run_step scaling 900 "$py" -m benchmarks.train_scaling --gpus 1,2,4,8 --gpt2-dir "$gpt2" \
        --json "$out/scaling.json" ;;
    overhead)
      run_step overhead 1200 "$py" -m benchmarks.study_overhead --flops 1.4e16,1.5e16,1.6e16,1.7e16,1.2e17 \
        --seeds 0,1 --grid-depth "{1.4e16: [6], 1.5e16: [6], 1.6e16: [6], 1.7e16: [6], 1.2e17: [12]}" \
        --gpus-per-cell "{6: 1, 12: 4}" --max-bytes 600MB --json "$out/overhead.json" ;;
    *) echo "unknown step: $step (steps: scaling overhead)" >&2; exit 2 ;;
  esac
done
