#!/usr/bin/env bash
# Every GPU measurement that docs/benchmarks.md records, one after another on one GPU, each bounded in time;
# logs and JSON results go to OUT_DIR. Run from the project's root with the project importable.
#
#   benchmarks/gpu_all.sh OUT_DIR                      # all steps, in this order
#   benchmarks/gpu_all.sh OUT_DIR generate eval        # only these
#
# Steps: tests (pytest -m gpu), train (throughput vs the nanoGPT reference), fp8 (the same at micro-batch
# 128 with fp8_head off and on), head (the lm_head's matmuls in bf16 and FP8, alone), fp8_quality (what
# fp8_head costs in loss on real text, two seeds, beside a second bf16 run of each), profile (where a step's time goes, by torch.profiler),
# breakdown (the same by taking parts away, beside candidate changes), generate (KV cache vs recompute),
# eval (the core preset batched vs one at a time), overhead (a study of small cells under compile: auto,
# which compiles cells this short regionally: per-cell overhead and GPU-busy fraction; overhead_serial, not
# in the default list: the same study without the overlapped start-up). A step that fails or runs out of
# time is reported and the next one runs. Beside each step's log, STEP.clocks.csv samples the GPU's clock,
# power and temperature. GPT2_DIR and EVAL_BUNDLE default to ../shared's copies.
set -uo pipefail
out=${1:?usage: benchmarks/gpu_all.sh OUT_DIR [step ...]}
shift
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(tests train fp8 head fp8_quality profile breakdown generate eval overhead)
mkdir -p "$out"
gpt2=${GPT2_DIR:-../shared/tokenizers/gpt2}
bundle=${EVAL_BUNDLE:-../shared/eval_bundle}
py=${PYTHON:-python}
pyf=("$py" -X faulthandler)
overhead_study=("$py" -m benchmarks.study_overhead --depths 6,8,10,12 --flops 1e16,1.5e16 --compile auto)
# Only the test files with GPU tests: collecting the others would import what the GPU image may lack.
gpu_tests=$(grep -l "pytest.mark.gpu" tests/test_*.py)

run_step() {  # name, seconds, command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  # A Python step out of time gets SIGABRT, so that faulthandler (-X faulthandler) prints where it was; the
  # study (overhead) gets SIGTERM, which its runner handles by stopping its trainers cleanly.
  local signal=ABRT
  [[ "$name" = overhead* ]] && signal=TERM
  # The GPU's clock, power and temperature once a second beside each step: a sustained run may clock lower
  # than short timed bursts (the trainer's micro-batch was 5% slower than the breakdown's on 2026-12-06).
  local sampler=
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu --format=csv -lms 1000 \
      >"$out/$name.clocks.csv" 2>/dev/null &
    sampler=$!
  fi
  timeout --signal=$signal --kill-after=20 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  echo "$name: exit $rc after $((SECONDS - t0)) s (log: $out/$name.log)"
  tail -n 25 "$out/$name.log"
}

for step in "${steps[@]}"; do
  case $step in
    tests)
      # shellcheck disable=SC2086
      run_step tests 480 "${pyf[@]}" -m pytest -q -m gpu -p no:cacheprovider -o faulthandler_timeout=120 --tb=short -rfE $gpu_tests ;;
    train) run_step train 420 "${pyf[@]}" -m benchmarks.train_throughput --gpt2-dir "$gpt2" \
      --ours-head default,unfused --json "$out/train.json" ;;
    fp8) run_step fp8 420 "${pyf[@]}" -m benchmarks.train_throughput --gpt2-dir "$gpt2" --ref-micro-batch 128 \
      --ours-micro-batch auto --ours-fp8-head false,true --json "$out/fp8.json" ;;
    head) run_step head 120 "${pyf[@]}" -m benchmarks.head_matmuls --json "$out/head.json" ;;
    fp8_quality) run_step fp8_quality 900 "${pyf[@]}" -m benchmarks.fp8_head_quality --tokenizer "$gpt2" \
      --max-bytes 250MB --steps 160 --seeds 0,1 --heads bf16,bf16-rerun,fp8 --out "$out/fp8_quality" \
      --json "$out/fp8_quality.json" ;;
    profile)
      run_step profile 180 "${pyf[@]}" -m benchmarks.train_throughput --gpt2-dir "$gpt2" --skip-reference \
        --timed-steps 3 --profile-steps 3 --profile-dir "$out/profile" ;;
    breakdown) run_step breakdown 360 "${pyf[@]}" -m benchmarks.train_breakdown --json "$out/breakdown.json" ;;
    generate) run_step generate 180 "${pyf[@]}" -m benchmarks.generate_throughput --json "$out/generate.json" ;;
    eval)
      run_step eval 300 "${pyf[@]}" -m benchmarks.eval_throughput --eval-bundle "$bundle" --tokenizer "$gpt2" \
        --json "$out/eval.json" ;;
    overhead) run_step overhead 540 "${overhead_study[@]}" --json "$out/overhead.json" ;;
    overhead_serial)  # the same study with resources.overlap_startup off, for the comparison
      run_step overhead_serial 590 "${overhead_study[@]}" --no-overlap --json "$out/overhead_serial.json" ;;
    *)
      echo "unknown step: $step (steps: tests train fp8 head fp8_quality profile breakdown generate eval" \
        "overhead overhead_serial)" >&2
      exit 2 ;;
  esac
done
