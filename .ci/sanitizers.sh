#!/usr/bin/env bash
# CI's sanitizer builds (docs/reliability.md), after the main build and tests:
#   build-asan  AddressSanitizer + UndefinedBehaviorSanitizer: the unit suites
#               (kernels in every dtype, layers, recipes, the plugin loader,
#               safetensors, text and Megatron data readers, tokenizers,
#               precision, reliability, the trainer), the CLI refusal suite,
#               the malformed .bin/.idx suite (megatron) and the fuzzers' corpus.
#   build-tsan  ThreadSanitizer: the suites whose ranks are threads of one
#               process (comm-local): dispatchers, failures and timeouts.
# CUDA, NCCL and MPI stay out of these builds (nothing runs them here). Any
# report fails the step: UBSan halts on its first finding, ASan and TSan
# exit non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
common=(-Dcuda=disabled -Dnccl=disabled -Dmpi=disabled -Dbuildtype=debugoptimized -Db_lundef=false)

export WEFT_SANITIZER  # the CLI suite skips its address-space-limit cases under ASan

rm -rf build-asan build-tsan
WEFT_SANITIZER=AddressSanitizer
meson setup build-asan "${common[@]}" -Db_sanitize=address,undefined >/dev/null
ninja -C build-asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  meson test -C build-asan --print-errorlogs --timeout-multiplier 4 \
    recipe options topology rng loader backend_cpu backend_dtypes llama_kernels optim data tokenizer nn \
    safetensors dispatch grad_sync tensor_parallel reliability precision observe trainer cli fuzz megatron

WEFT_SANITIZER=ThreadSanitizer
meson setup build-tsan "${common[@]}" -Db_sanitize=thread >/dev/null
ninja -C build-tsan weft tests/test_dispatch tests/multirank/test_failures tests/multirank/fixture/libweft-fixture-fail-at.so \
  $(cd build-tsan && ninja -t targets all | grep -o '^[^:]*\.so' | grep -v '\.p/' | grep -E '^(plugins|parallel|models|optim)/' | sort -u | tr '\n' ' ')
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  meson test -C build-tsan --no-rebuild --print-errorlogs --timeout-multiplier 4 dispatch failures
