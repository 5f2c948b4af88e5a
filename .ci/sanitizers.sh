#!/usr/bin/env bash
# CI's sanitizer builds (docs/reliability.md), after the main build and tests:
#   build-asan  AddressSanitizer + UndefinedBehaviorSanitizer: the unit suites
#               (kernels, layers, recipes, safetensors, data, reliability, the
#               trainer), the CLI refusal suite and the fuzzers' corpus.
#   build-tsan  ThreadSanitizer: the suites whose ranks are threads of one
#               process (comm-local): dispatchers, failures and timeouts.
# CUDA, NCCL and MPI stay out of these builds (nothing runs them here). Any
# report fails the step: UBSan halts on its first finding, ASan and TSan
# exit non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
common=(-Dcuda=disabled -Dnccl=disabled -Dmpi=disabled -Dbuildtype=debugoptimized -Db_lundef=false)

rm -rf build-asan build-tsan
meson setup build-asan "${common[@]}" -Db_sanitize=address,undefined >/dev/null
ninja -C build-asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --print-errorlogs --timeout-multiplier 4 \
    recipe options topology rng backend_cpu optim data tokenizer nn safetensors dispatch grad_sync \
    tensor_parallel reliability observe trainer cli fuzz

meson setup build-tsan "${common[@]}" -Db_sanitize=thread >/dev/null
ninja -C build-tsan weft tests/test_dispatch tests/multirank/test_failures \
  $(cd build-tsan && ninja -t targets all | grep -o '^[^:]*\.so' | grep -E '^(plugins|parallel|models|optim)/' | tr '\n' ' ')
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  meson test -C build-tsan --no-rebuild --print-errorlogs --timeout-multiplier 4 dispatch failures
