#!/usr/bin/env bash
# Device check of the CUDA backend and comm-nccl (docs/gpu.md), for a machine
# with one GPU, in one go and within about 5 minutes:
#   1. the gpu test suite's executables (every CUDA kernel against the CPU
#      backend, gpt-tiny training cuda vs cpu, checkpoints across backends;
#      comm-nccl as a single rank);
#   2. `weft train` of examples/gpt-tiny.toml for 30 steps on cpu and on cuda
#      (fp32, TF32 off): the last step's losses side by side;
#   3. a benchmark: a GPT-2-small-shaped model (12 layers, 768 wide, 1024
#      positions, batch 8) for a few steps on cuda in fp32, with TF32 and in
#      bf16: tokens/s of the last step;
#   4. where Python has transformers: the folders `weft export --format hf`
#      writes, loaded with from_pretrained, logits against weft's.
# A short table comes last. Details of anything that failed are printed above it.
# Each part has a time limit (120 + 30 + 2 x 45 + 3 x 40 + 120 s at most); a normal
# run takes a fraction of that.
#
#   tests/gpu/device_check.sh [BUILD_DIR]     (default: ./build of this repository)
#
# Run from the repository (the source tree: recipes, docs used as training
# text); BUILD_DIR may be a build tree carried to the GPU machine (an env.sh
# next to it is sourced first). The data is the repository's own docs, so no
# corpus needs installing there.
set -uo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=$(cd "${1:-$src/build}" && pwd) || { echo "no build directory ${1:-$src/build}"; exit 2; }
weft=$build/weft
# A build tree packed for another machine carries an env.sh beside it (the
# library path of its libraries and of the machine's CUDA and NCCL).
if [[ -f $build/../env.sh ]]; then
  # shellcheck disable=SC1091
  source "$build/../env.sh"
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export WEFT_BUILD_ROOT=$build WEFT_SOURCE_ROOT=$src
start=$(date +%s)

rows=()  # "check|result" lines of the closing table
row() { rows+=("$1|$2"); }

gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n1)
echo "== GPU: ${gpu:-nvidia-smi not found}"
echo "== build: $build"

# ---- 1. the gpu suite: gtest executables, counted from their summaries
suite() {
  local name=$1 exe=$2 limit=$3
  if [[ ! -x $exe ]]; then
    row "suite $name" "not built ($exe)"
    return
  fi
  echo "== suite $name ($exe)"
  timeout -s KILL "$limit" "$exe" --gtest_color=no >"$tmp/$name.log" 2>&1
  local rc=$? log=$tmp/$name.log
  local passed failed skipped
  passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\?\..*/\1/p' "$log" | tail -n1)
  failed=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) tests\?, listed below.*/\1/p' "$log" | tail -n1)
  skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) tests\?, listed below.*/\1/p' "$log" | tail -n1)
  if [[ $rc == 77 ]]; then
    row "suite $name" "SKIPPED: $(head -n1 "$log")"
  elif [[ $rc == 137 ]]; then  # killed at the limit (weft and gtest get SIGKILL: weft would checkpoint on SIGTERM)
    tail -n 30 "$log"
    row "suite $name" "TIMED OUT after ${limit}s (${passed:-0} passed before)"
  else
    if [[ $rc != 0 ]]; then
      grep -E '^\[  FAILED  \]|Failure|error|Error' "$log" | head -n 60
      [[ -z $failed ]] && tail -n 30 "$log"
    fi
    row "suite $name" "${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped (exit $rc)"
  fi
}
suite backend_cuda "$build/tests/gpu/test_backend_cuda" 120
suite comm_nccl "$build/tests/multirank/test_comm_nccl" 30

# ---- 2. and 3. weft train: the last logged step's loss and tokens/s
field() {  # field KEY FILE: the value of "KEY" in the last JSON line of FILE
  tail -n1 "$2" 2>/dev/null | grep -o "\"$1\": *[^,}]*" | head -n1 | cut -d: -f2 | tr -d ' '
}
train() {  # train NAME LIMIT ARGS...: one run; sets loss and tps
  local name=$1 limit=$2
  shift 2
  loss="" tps=""
  local out=$tmp/$name
  timeout -s KILL "$limit" "$weft" train "$src/examples/gpt-tiny.toml" \
    --set "data.files=[\"$src/docs/design.md\", \"$src/docs/plugins.md\", \"$src/docs/recipes.md\", \"$src/docs/distributed.md\"]" \
    --set data.documents=blank-line --set log.interval=1 --set checkpoint.interval=0 \
    --set "run.out_dir=$out" "$@" >"$tmp/$name.log" 2>&1
  local rc=$?
  if [[ $rc != 0 ]]; then
    [[ $rc == 137 ]] && echo "== $name: killed after ${limit}s"
    echo "== $name failed (exit $rc):"
    tail -n 20 "$tmp/$name.log"
    return 1
  fi
  loss=$(field loss "$out/metrics.jsonl")
  tps=$(field tokens_per_s "$out/metrics.jsonl")
}

echo "== weft train gpt-tiny, 30 steps, cpu and cuda"
if train tiny-cpu 45 --set run.steps=30 --set backend.plugin=cpu; then
  cpu_loss=$loss cpu_tps=$tps
  row "gpt-tiny 30 steps, cpu" "loss $(printf '%.6f' "$cpu_loss"), $(printf '%.0f' "$cpu_tps") tokens/s"
else
  cpu_loss="" && row "gpt-tiny 30 steps, cpu" "FAILED (log above)"
fi
if train tiny-cuda 45 --set run.steps=30 --set backend.plugin=cuda; then
  rel=""
  [[ -n $cpu_loss ]] && rel=$(awk -v a="$loss" -v b="$cpu_loss" 'BEGIN { d = a - b; if (d < 0) d = -d; printf "%.2e", d / b }')
  row "gpt-tiny 30 steps, cuda" "loss $(printf '%.6f' "$loss"), $(printf '%.0f' "$tps") tokens/s${rel:+, rel diff to cpu $rel}"
else
  row "gpt-tiny 30 steps, cuda" "FAILED (log above)"
fi

echo "== benchmark: 12 x 768, 1024 positions, batch 8, on cuda"
bench=(--set run.steps=6 --set model.layers=12 --set model.hidden=768 --set model.heads=12
       --set model.seq_length=1024 --set batch.micro=8 --set batch.global=8 --set backend.plugin=cuda)
for mode in "fp32|" "tf32|--set backend.tf32=true" "bf16|--set precision.plugin=bf16"; do
  label=${mode%%|*} extra=${mode#*|}
  # shellcheck disable=SC2086
  if train "bench-$label" 40 "${bench[@]}" $extra; then
    row "bench 12x768 T1024 B8, $label" "$(printf '%.0f' "$tps") tokens/s (loss $(printf '%.4f' "$loss"))"
  else
    row "bench 12x768 T1024 B8, $label" "FAILED (log above)"
  fi
done

# ---- 4. exported Hugging Face folders in transformers itself (docs/checkpoints.md), where it is installed
echo "== transformers: weft export --format hf folders loaded with from_pretrained"
if timeout 120 python3 "$src/tests/parity/hf_transformers_check.py" "$build/tests/parity/parity_dump" "$build" \
     "$src/tests/parity" >"$tmp/hf.log" 2>&1; then
  row "hf export in transformers" "$(tail -n1 "$tmp/hf.log")"
else
  rc=$?
  cat "$tmp/hf.log"
  if [[ $rc -eq 77 ]]; then row "hf export in transformers" "skipped (transformers not installed)"
  else row "hf export in transformers" "FAILED (log above)"; fi
fi

echo
echo "== device check summary ($(( $(date +%s) - start )) s; GPU: ${gpu:-unknown})"
for r in "${rows[@]}"; do
  printf '%-34s %s\n' "${r%%|*}" "${r#*|}"
done
