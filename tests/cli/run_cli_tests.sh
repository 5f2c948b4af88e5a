#!/usr/bin/env bash
# CLI suite: `weft check` on malformed recipes (exit 2, exactly one line on
# stderr naming file:line:col, no crash), `weft plugins` on each plugin
# fixture, and the happy paths (--version, plugins NAME, check of a valid recipe).
#
# usage: run_cli_tests.sh WEFT_EXE SOURCE_ROOT BUILD_ROOT
set -u

if [ $# -ne 3 ]; then
  echo "usage: $0 WEFT_EXE SOURCE_ROOT BUILD_ROOT" >&2
  exit 1
fi
WEFT=$1
SRC=$2
BUILD=$3
FIX=$BUILD/tests/fixtures

if [ ! -x "$WEFT" ]; then
  echo "weft executable not found: $WEFT (build it first: ninja -C $BUILD)" >&2
  exit 1
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/weft-cli-XXXXXX")
trap 'rm -rf "$TMP"' EXIT
OUT=$TMP/stdout
ERR=$TMP/stderr
# Nothing from the caller's environment changes which plugins are found.
unset WEFT_PLUGIN_PATH OMPI_COMM_WORLD_SIZE PMI_SIZE PMIX_SIZE WORLD_SIZE

passed=0
failed=0
current=""
case_ok=1

begin() {
  current=$1
  case_ok=1
}
problem() {
  if [ $case_ok -eq 1 ]; then echo "FAIL: $current"; fi
  echo "    $*"
  case_ok=0
}
finish() {
  if [ $case_ok -eq 1 ]; then
    passed=$((passed + 1))
    echo "ok: $current"
  else
    failed=$((failed + 1))
    echo "    --- stdout (first lines):"
    head -n 5 "$OUT" | sed 's/^/    | /'
    echo "    --- stderr (first lines):"
    head -n 5 "$ERR" | cut -c1-400 | sed 's/^/    | /'
  fi
}

# run [VAR=value ...] -- ARGS...: runs weft with a 60 s limit; sets $rc.
run() {
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    envs+=("$1")
    shift
  done
  shift
  env "${envs[@]+"${envs[@]}"}" timeout 60 "$WEFT" "$@" >"$OUT" 2>"$ERR" </dev/null
  rc=$?
  if [ $rc -eq 124 ]; then problem "timed out after 60 s: weft $*"; fi
}

# Nothing that looks like a crash, an uncaught exception or a stack trace.
expect_no_crash() {
  if grep -aqE 'terminate called|Aborted|Segmentation fault|core dumped|stack trace|Stack trace|^#[0-9]+ +0x|what\(\):' "$OUT" "$ERR"; then
    problem "crash output: $(grep -ahE 'terminate called|Aborted|Segmentation|core dumped|stack trace|what\(\)' "$OUT" "$ERR" | head -n 2)"
  fi
  if [ $rc -ge 128 ]; then problem "killed by signal $((rc - 128))"; fi
}

expect_rc() {
  if [ "$rc" -ne "$1" ]; then problem "exit code $rc, expected $1"; fi
}

# stderr is exactly one newline-terminated line starting with "weft: error: ".
expect_one_error_line() {
  local lines
  lines=$(wc -l <"$ERR")
  if [ "$lines" -ne 1 ] || [ -n "$(tail -c 1 "$ERR" | tr -d '\n')" ]; then
    problem "stderr has $lines newline(s), expected exactly one line"
  fi
  if ! head -n 1 "$ERR" | grep -aq '^weft: error: '; then problem "stderr does not start with 'weft: error: '"; fi
}

# Each argument is a fixed string the stderr line must contain.
expect_err_has() {
  local s
  for s in "$@"; do
    if ! grep -aqF -- "$s" "$ERR"; then problem "stderr lacks: $s"; fi
  done
}
expect_out_has() {
  local s
  for s in "$@"; do
    if ! grep -aqF -- "$s" "$OUT"; then problem "stdout lacks: $s"; fi
  done
}

# refuse NAME RECIPE [--set ...] -- EXPECTED...: `weft check` must refuse it.
refuse() {
  local name=$1 recipe=$2
  shift 2
  local args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    args+=("$1")
    shift
  done
  shift
  begin "check refuses: $name"
  run -- check "$recipe" "${args[@]+"${args[@]}"}"
  expect_rc 2
  expect_one_error_line
  expect_no_crash
  expect_err_has "$@"
  finish
}

# ---- recipes --------------------------------------------------------------------------------

# The minimal valid recipe; appended text starts at line 13.
R=$TMP/recipes
mkdir -p "$R"
cat >"$R/base.toml" <<'EOF'
[model]
plugin = "gpt"
layers = 1
hidden = 32
heads = 2
seq_length = 16

[data]
plugin = "synthetic"

[run]
steps = 2
EOF

# variant NAME APPEND_TEXT: base + text (printf %b, so \n and \xHH work).
variant() {
  cp "$R/base.toml" "$R/$1.toml"
  printf '%b' "$2" >>"$R/$1.toml"
  echo "$R/$1.toml"
}
# replace NAME FROM TO: base with one line replaced (fixed strings).
replace() {
  local from=$2 to=$3
  FROM="$from" TO="$to" awk '{ if ($0 == ENVIRON["FROM"]) print ENVIRON["TO"]; else print }' "$R/base.toml" >"$R/$1.toml"
  echo "$R/$1.toml"
}

begin "check accepts the minimal recipe"
run -- check "$R/base.toml"
expect_rc 0
expect_no_crash
expect_out_has "[model]" 'plugin = "gpt"' "# layout: world 1" "# parameters:" "# memory per rank"
if [ -s "$ERR" ] && grep -aq 'error' "$ERR"; then problem "stderr has an error: $(head -n 1 "$ERR")"; fi
finish

begin "check: --set changes the parameter count"
run -- check "$R/base.toml" --set model.layers=2
expect_rc 0
expect_no_crash
p1=$(grep -a '^# parameters:' "$OUT")
run -- check "$R/base.toml"
p0=$(grep -a '^# parameters:' "$OUT")
if [ -z "$p0" ] || [ "$p0" = "$p1" ]; then problem "parameter lines: '$p0' vs '$p1'"; fi
finish

begin "check: bf16 and fp16 show the smaller memory (weights 2 bytes, optimizer state 12 per parameter)"
mem_of() { grep -a '^# memory per rank' "$OUT" | grep -o "$1 [0-9.]* MiB" | grep -o '[0-9.]*' | head -n 1; }
run -- check "$R/base.toml"
p32=$(mem_of params); o32=$(mem_of "optimizer state")
for mode in bf16 fp16; do
  run -- check "$R/base.toml" --set precision.plugin=$mode
  expect_rc 0
  expect_out_has "# precision: $mode"
  p16=$(mem_of params); o16=$(mem_of "optimizer state")
  if ! awk -v a="$p32" -v b="$p16" -v c="$o32" -v d="$o16" \
      'BEGIN { exit !(a > 0 && (b * 2 - a) ^ 2 < 1e-3 && (d * 2 - c * 3) ^ 2 < 1e-3) }'; then
    problem "$mode: params $p16 MiB, optimizer $o16 MiB; fp32: $p32, $o32"
  fi
done
finish

begin "check: the printed resolved recipe is itself a valid recipe"
run -- check "$R/base.toml"
grep -av '^# layout\|^#   \|^# parameters\|^# memory' "$OUT" >"$R/resolved.toml"
cp "$OUT" "$TMP/first.txt"
run -- check "$R/resolved.toml"
expect_rc 0
expect_no_crash
if ! diff -q "$TMP/first.txt" "$OUT" >/dev/null; then problem "checking the resolved recipe prints something else"; fi
finish

refuse "syntax error" "$(variant syntax '[batch]\nmicro = = 2\n')" -- "syntax.toml:14:9: syntax error"
refuse "unknown section" "$(variant section '[modle]\nlayers = 2\n')" -- \
  "section.toml:13:2: unknown section [modle] (did you mean [model]?)"
refuse "unknown key" "$(variant key '[batch]\nmicor = 2\n')" -- \
  "key.toml:14:1: batch.micor: unknown key (did you mean 'micro'?)"
refuse "wrong type" "$(replace type 'layers = 1' 'layers = "one"')" -- \
  "type.toml:3:10: model.layers: expected integer, got string"
refuse "float for an integer" "$(replace float 'hidden = 32' 'hidden = 32.0')" -- \
  "float.toml:4:10: model.hidden: expected integer, got float"
refuse "out of range" "$(variant range '[batch]\nmicro = 0\n')" -- \
  "range.toml:14:9: batch.micro: 0 is out of range (allowed 1 to 1048576)"
refuse "integer literal overflow" "$(variant overflow '[checkpoint]\ninterval = 99999999999999999999\n')" -- \
  "overflow.toml:14:" "syntax error" "99999999999999999999"
refuse "missing data.plugin" "$(replace noplugin 'plugin = "synthetic"' 'size = 10')" -- \
  "noplugin.toml:8:1: missing required key data.plugin"
refuse "missing data.files" "$(replace nofiles 'plugin = "synthetic"' 'plugin = "text"')" -- \
  "nofiles.toml:8:1: missing required key data.files"
refuse "tensor x pipeline x data != world" \
  "$(variant world '[parallel]\ntensor = 2\npipeline = 2\ndata = 3\nworld = 8\n')" -- \
  "world.toml:16:8: parallel.data: tensor 2 x pipeline 2 x data 3 = 12 ranks, but world is 8"
refuse "global not divisible" "$(variant global '[parallel]\ndata = 2\n[batch]\nmicro = 3\nglobal = 10\n')" -- \
  "global.toml:17:10: batch.global: global batch 10 is not divisible by micro 3 x data 2 = 6"
refuse "expert does not divide data" "$(variant expert '[parallel]\ndata = 4\nexpert = 3\n')" -- \
  "expert.toml:15:10: parallel.expert: expert 3 does not divide data 4"
refuse "non-UTF-8 bytes" "$(variant utf8 '[checkpoint]\n# caf\xe9\n')" -- "utf8.toml:14:" "syntax error"
refuse "absurd nesting" \
  "$(variant nesting "[checkpoint]\nx = $(printf '[%.0s' $(seq 40))1$(printf ']%.0s' $(seq 40))\n")" -- \
  "nesting.toml:14:" "nested more than 16 deep"
refuse "absurder nesting" \
  "$(variant nesting2 "[checkpoint]\nx = $(head -c 5000 /dev/zero | tr '\0' '[')\n")" -- "nesting2.toml:14:" "syntax error"
printf 'batch = 3\n' >"$R/nottable.toml"
cat "$R/base.toml" >>"$R/nottable.toml"
refuse "section that is not a table" "$R/nottable.toml" -- "nottable.toml:1:1: [batch] must be a table"
refuse "unknown plugin" "$(replace plugin 'plugin = "gpt"' 'plugin = "gtp"')" -- \
  "plugin.toml:2:10: model.plugin: no model plugin named 'gtp' (did you mean 'gpt'?)"
refuse "unknown sink" "$(variant sink '[log]\nsinks = ["console", "jsnol"]\n')" -- \
  "sink.toml:14:9: log.sinks: no metrics_sink plugin named 'jsnol' (did you mean 'jsonl'?)"
refuse "option of an unlisted sink" "$(variant sinkopt '[log]\nsinks = ["console"]\n[log.jsonl]\n')" -- \
  "sinkopt.toml:15:1: [log.jsonl] configures a sink that log.sinks does not list"

printf 'include = ["nope.toml"]\n' >"$R/noinc.toml"
cat "$R/base.toml" >>"$R/noinc.toml"
refuse "missing include" "$R/noinc.toml" -- "noinc.toml:1:12: include 'nope.toml' not found"
printf 'include = ["cycle-b.toml"]\n' >"$R/cycle-a.toml"
printf '\ninclude = "cycle-a.toml"\n' >"$R/cycle-b.toml"
refuse "include cycle" "$R/cycle-a.toml" -- "cycle-b.toml:2:11: include cycle: cycle-a.toml -> cycle-b.toml -> cycle-a.toml"

refuse "model vocabulary below the tokenizer's" "$(replace vocab 'seq_length = 16' $'seq_length = 16\nvocab_size = 100')" -- \
  "vocab.toml:7:14: model.vocab_size: vocab_size 100 is smaller than the tokenizer's vocabulary of 257"
refuse "--set not an integer" "$R/base.toml" --set run.steps=abc -- "--set run.steps=abc: run.steps: 'abc' is not an integer"
refuse "--set unknown section" "$R/base.toml" --set modle.layers=3 -- \
  "--set modle.layers=3: unknown section [modle] (did you mean [model]?)"
refuse "--set unknown key" "$R/base.toml" --set model.layer=3 -- \
  "--set model.layer=3: model.layer: unknown key (did you mean 'layers'?)"
refuse "--set malformed" "$R/base.toml" --set steps -- "--set steps: expected section.key=value"
refuse "--set integer overflow" "$R/base.toml" --set run.steps=99999999999999999999 -- \
  "--set run.steps=99999999999999999999: run.steps: integer overflow"

refuse "missing recipe file" "$R/does-not-exist.toml" -- "does-not-exist.toml" "not found"
mkdir -p "$R/folder.toml"
refuse "directory as recipe" "$R/folder.toml" -- "folder.toml" "is a directory"
# A binary file: every byte value, deterministic.
for i in $(seq 0 255); do printf "\\x$(printf %02x $(((i * 37 + 11) % 256)))"; done >"$R/binary.toml"
refuse "binary file as recipe" "$R/binary.toml" -- "binary.toml:1:" "syntax error"
refuse "the weft executable as recipe" "$WEFT" -- "$WEFT"

# ---- recipes derived from examples/ -----------------------------------------------------------

if ls "$SRC"/examples/*.toml >/dev/null 2>&1; then
  mkdir -p "$TMP/examples"
  cp -r "$SRC"/examples/. "$TMP/examples/"
  # examples/gpt-megatron.toml reads the indexed dataset its first comment makes.
  "$WEFT" preprocess "$TMP/examples/gpt-megatron.toml" --input "$TMP/examples/data/weft-docs.jsonl" \
    --output-prefix "$TMP/data/weft-docs" --append-eod >/dev/null 2>&1
  for ex in "$TMP"/examples/*.toml; do
    name=$(basename "$ex" .toml)
    begin "check accepts examples/$name.toml"
    run -- check "$ex"
    expect_rc 0
    expect_no_crash
    expect_out_has "# parameters:" "# memory per rank"
    finish

    # Appended after the last line: an unknown section, then a wrong type.
    n=$(($(wc -l <"$ex") + 1))
    if [ -n "$(tail -c 1 "$ex" | tr -d '\n')" ]; then printf '\n' >>"$ex"; fi
    cp "$ex" "$TMP/examples/$name-bad1.toml"
    printf '[trainer]\nsteps = 3\n' >>"$TMP/examples/$name-bad1.toml"
    refuse "examples/$name.toml + unknown section" "$TMP/examples/$name-bad1.toml" -- \
      "$name-bad1.toml:$n:2: unknown section [trainer]"
    cp "$ex" "$TMP/examples/$name-bad2.toml"
    printf '[checkpoint]\nkeep = "two"\n' >>"$TMP/examples/$name-bad2.toml"
    if grep -q '^\[checkpoint\]' "$ex"; then
      # A second [checkpoint] header is a TOML error at the header.
      refuse "examples/$name.toml + duplicate table" "$TMP/examples/$name-bad2.toml" -- "$name-bad2.toml:$n:" "syntax error"
    else
      refuse "examples/$name.toml + wrong type" "$TMP/examples/$name-bad2.toml" -- \
        "$name-bad2.toml:$((n + 1)):8: checkpoint.keep: expected integer, got string"
    fi
  done
fi

# ---- plugins -----------------------------------------------------------------------------------

begin "--version"
run -- --version
expect_rc 0
expect_no_crash
if ! grep -aqE '^weft [0-9]+\.[0-9]+\.[0-9]+ \(plugin ABI [0-9]+\)$' "$OUT"; then problem "version line: $(head -n 1 "$OUT")"; fi
finish
# The ABI this build expects; the bad-abi fixture is built with one more.
ABI=$(sed -nE 's/^weft .* \(plugin ABI ([0-9]+)\)$/\1/p' "$OUT" | head -n 1)
BAD_ABI_CAUSE="ABI version $((${ABI:-0} + 1)), this weft expects ${ABI:-?}"

begin "plugins lists the built-ins"
run -- plugins
expect_rc 0
expect_no_crash
expect_out_has "model:" "gpt" "backend:" "cpu" "metrics_sink:"
if [ -s "$ERR" ]; then problem "stderr not empty"; fi
finish

begin "plugins gpt prints its options"
run -- plugins gpt
expect_rc 0
expect_no_crash
expect_out_has "model/gpt" "layers" "integer, default 2" "hidden" "heads" "seq_length"
finish

begin "plugins NAME that does not exist"
run -- plugins gtp
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "no plugin or family named 'gtp' (did you mean 'gpt'?)"
finish

begin "plugins FAMILY lists that family only"
run -- plugins tokenizer
expect_rc 0
expect_no_crash
expect_out_has "tokenizer:" "byte"
if grep -aq '^model:' "$OUT"; then problem "lists other families"; fi
if [ -s "$ERR" ]; then problem "stderr not empty"; fi
finish

begin "plugins misspelt family suggests it"
run -- plugins tokeniser
expect_rc 2
expect_one_error_line
expect_err_has "(did you mean 'tokenizer'?)"
finish

begin "plugins with the two-family fixture"
run WEFT_PLUGIN_PATH="$FIX/good" -- plugins
expect_rc 0
expect_no_crash
expect_out_has "fixture-tok" "fixture-sink" "9.8.7"
if [ -s "$ERR" ]; then problem "stderr not empty"; fi
finish

begin "plugins fixture-tok prints every option type"
run WEFT_PLUGIN_PATH="$FIX/good" -- plugins fixture-tok
expect_rc 0
expect_no_crash
expect_out_has "tokenizer/fixture-tok 9.8.7" "$FIX/good/libfixture-good.so" "offset" "range 0..1000" \
  "one of keep|lower|upper" "float, default 1.0" "boolean, default false" 'array of strings, default ["<eot>"]'
finish

# refusal fixtures: exit 2, one line naming the file and the cause.
plugin_refusal() {
  local dir=$1 file=$2 cause=$3
  begin "plugins refuses fixture $dir"
  run WEFT_PLUGIN_PATH="$FIX/$dir" -- plugins
  expect_rc 2
  expect_one_error_line
  expect_no_crash
  expect_err_has "weft: error: plugin $FIX/$dir/$file: $cause"
  expect_out_has "model:" "gpt"  # the listing of what did load still comes
  finish
}
plugin_refusal not-elf not-a-library.so "not a shared library (no ELF header)"
plugin_refusal no-entry libfixture-no-entry.so "missing entry point 'weft_plugin_info'"
plugin_refusal bad-abi libfixture-bad-abi.so "$BAD_ABI_CAUSE"
plugin_refusal unresolved libfixture-unresolved.so "unresolved symbol: weft_fixture_missing_symbol"
plugin_refusal throws libfixture-throws.so "registration failed: fixture refuses to register (needs /dev/fixture)"
plugin_refusal throws-other libfixture-throws-other.so "registration failed"
plugin_refusal duplicate libfixture-duplicate.so "duplicate plugin name backend/cpu (already provided by "

begin "check ignores a refused plugin the recipe does not need"
run WEFT_PLUGIN_PATH="$FIX/bad-abi" -- check "$R/base.toml"
expect_rc 0
expect_no_crash
expect_out_has "# parameters:"
finish

begin "check ignores a plugin whose register function throws a non-std exception"
run WEFT_PLUGIN_PATH="$FIX/throws-other" -- check "$R/base.toml"
expect_rc 0
expect_no_crash
expect_out_has "# parameters:"
finish

begin "check names the refused files when a needed plugin is missing"
run WEFT_PLUGIN_PATH="$FIX/bad-abi" -- check "$R/base.toml" --set tokenizer.plugin=fixture-bad-abi
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "--set tokenizer.plugin=fixture-bad-abi: tokenizer.plugin: no tokenizer plugin named 'fixture-bad-abi'" \
  "$FIX/bad-abi/libfixture-bad-abi.so: $BAD_ABI_CAUSE"
finish

begin "check uses a fixture plugin from WEFT_PLUGIN_PATH"
run WEFT_PLUGIN_PATH="$FIX/good" -- check "$R/base.toml" --set tokenizer.plugin=fixture-tok --set tokenizer.offset=10 \
  --set tokenizer.case=upper --set log.sinks=fixture-sink --set log.fixture-sink.digits=4
expect_rc 0
expect_no_crash
expect_out_has "[tokenizer]" 'plugin = "fixture-tok"' "offset = 10" 'case = "upper"' "[log.fixture-sink]" "digits = 4"
finish

begin "check uses a fixture plugin from [plugins] paths"
cp "$R/base.toml" "$R/paths.toml"
printf '[plugins]\npaths = ["%s"]\n[tokenizer]\nplugin = "fixture-tok"\nreverse = true\n' "$FIX/good" >>"$R/paths.toml"
run -- check "$R/paths.toml"
expect_rc 0
expect_no_crash
expect_out_has 'plugin = "fixture-tok"' "reverse = true"
finish

refuse "fixture option out of range" "$R/base.toml" --set tokenizer.plugin=fixture-tok --set tokenizer.offset=5000 -- \
  "no tokenizer plugin named 'fixture-tok'"
cp "$R/base.toml" "$R/fixrange.toml"
printf '[plugins]\npaths = ["%s"]\n[tokenizer]\nplugin = "fixture-tok"\ncase = "lowr"\n' "$FIX/good" >>"$R/fixrange.toml"
refuse "fixture option choice" "$R/fixrange.toml" -- \
  "fixrange.toml:17:8: tokenizer.case: 'lowr' is not one of keep, lower, upper (did you mean 'lower'?)"

# ---- usage errors ------------------------------------------------------------------------------

usage_error() {
  local name=$1
  shift
  begin "usage error: $name"
  run -- "$@"
  expect_rc 2
  expect_one_error_line
  expect_no_crash
  finish
}
usage_error "no subcommand"
usage_error "unknown subcommand" frobnicate
usage_error "check without recipe" check
usage_error "--set without value" check "$R/base.toml" --set
usage_error "unknown flag" check "$R/base.toml" --frobnicate

# ---- tensor parallelism --------------------------------------------------------------------------

TINY=$SRC/examples/gpt-tiny.toml
refuse "heads not divisible by tensor" "$TINY" --set parallel.tensor=8 -- \
  "gpt-tiny.toml:16:9: model.heads: heads 4 is not divisible by parallel.tensor 8 (each tensor-parallel rank holds whole heads)"
refuse "hidden not divisible by tensor" "$TINY" --set parallel.tensor=4 --set model.hidden=130 --set model.heads=2 -- \
  "--set model.hidden=130: model.hidden: hidden 130 is not divisible by parallel.tensor 4"
refuse "sequence parallelism with seq_length not divisible by tensor" "$TINY" --set parallel.tensor=4 \
  --set parallel.tensor_parallel.sequence_parallel=true --set model.seq_length=66 -- \
  "model.seq_length: seq_length 66 is not divisible by parallel.tensor 4 (sequence parallelism splits the sequence)"
refuse "sequence parallelism with tensor 1" "$TINY" --set parallel.tensor_parallel.sequence_parallel=true -- \
  "parallel.tensor_parallel.sequence_parallel: sequence parallelism splits the sequence over the tensor-parallel ranks; it needs parallel.tensor > 1 (tensor is 1)"

# ---- llama ---------------------------------------------------------------------------------------

LLAMA=$SRC/examples/llama-tiny.toml
refuse "llama heads not divisible by kv_heads" "$LLAMA" --set model.kv_heads=3 -- \
  "--set model.kv_heads=3: model.kv_heads: heads 4 is not divisible by kv_heads 3"
refuse "llama odd head dimension" "$LLAMA" --set model.hidden=120 --set model.heads=8 -- \
  "model.heads: head dimension hidden / heads = 120 / 8 = 15 is odd; rotary embeddings rotate pairs, so it must be even"
refuse "llama kv_heads not divisible by tensor" "$LLAMA" --set parallel.tensor=4 -- \
  "model.kv_heads: kv_heads 2 is not divisible by parallel.tensor 4 (each tensor-parallel rank holds whole kv heads; they are not replicated)"
refuse "llama dense model with expert parallelism" "$LLAMA" --set parallel.expert=2 --set parallel.data=2 -- \
  "has no expert parameters; a dense model needs expert = 1"
refuse "llama experts not divisible by expert" "$LLAMA" --set model.moe_experts=3 --set model.moe_top_k=1 \
  --set parallel.expert=2 --set parallel.data=2 -- "model.moe_experts: moe_experts 3 is not divisible by parallel.expert 2"
refuse "llama top_k above experts" "$LLAMA" --set model.moe_experts=2 --set model.moe_top_k=3 -- \
  "model.moe_top_k: moe_top_k 3 exceeds moe_experts 2"

# The origin page's example: a 4096 -> 16384 column-parallel Linear over 4 ranks holds [4096, 4096] each.
begin "check prints each tensor-parallel rank's shards of the first block"
run -- check "$TINY" --set model.hidden=4096 --set model.heads=32 --set parallel.tensor=4
expect_rc 0
expect_no_crash
expect_out_has "# tensor-parallel rank 0 of 4, first block:" "# tensor-parallel rank 3 of 4, first block:" \
  "blocks.0.mlp.fc.weight [4096,4096] = dim 0 [12288:16384] of [16384,4096]" \
  "blocks.0.attn.qkv.weight [3072,4096] = dim 0 [3072:4096, 7168:8192, 11264:12288] of [12288,4096]" \
  "blocks.0.mlp.proj.weight [4096,4096] = dim 1 [0:4096] of [4096,16384]" "blocks.0.ln1.weight [4096] (whole)"
finish

# A tensor-2 run (sequence parallel, 2 steps) saves whole tensors: eval and
# generate read it like a one-rank checkpoint, and it scores the text as the
# one-rank run of the same recipe does.
TPRUN=$TMP/tp2run
ONERUN=$TMP/tp1run
TPTEXT=$TMP/tp-eval.txt
printf 'Tensor parallelism splits every layer over ranks. %.0s' $(seq 1 30) >"$TPTEXT"
begin "a tensor-parallel checkpoint evaluates like the one-rank run's"
run -- train "$TINY" --set run.steps=2 --set parallel.tensor=2 --set parallel.tensor_parallel.sequence_parallel=true \
  --set "run.out_dir=$TPRUN"
expect_rc 0
grep -q '"tensor": 2' "$TPRUN/checkpoints/step_2/meta.json" || problem "meta.json does not record tensor 2"
run -- train "$TINY" --set run.steps=2 --set "run.out_dir=$ONERUN"
expect_rc 0
run -- eval --checkpoint "$TPRUN" --text "$TPTEXT"
expect_rc 0
tp_loss=$(sed -E 's/.*"loss": ([^,]+),.*/\1/' "$OUT")
run -- eval --checkpoint "$ONERUN" --text "$TPTEXT"
one_loss=$(sed -E 's/.*"loss": ([^,]+),.*/\1/' "$OUT")
python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(abs(a - b) > 1e-5 * abs(b))" \
  "$tp_loss" "$one_loss" || problem "eval loss $tp_loss of the tensor-2 checkpoint, $one_loss of the one-rank one"
run -- generate --checkpoint "$TPRUN" --prompt "The " --tokens 5 --seed 1
expect_rc 0
expect_no_crash
finish

begin "a pipeline checkpoint (interleaved, uneven stages) evaluates like the one-rank run's"
run -- train "$TINY" --set run.steps=2 --set parallel.pipeline=2 --set parallel.pipeline_schedule.plugin=interleaved \
  --set "parallel.pipeline_schedule.layers_per_stage=[2,2]" --set "run.out_dir=$TMP/pprun"
expect_rc 0
run -- eval --checkpoint "$TMP/pprun" --text "$TPTEXT"
expect_rc 0
pp_loss=$(sed -E 's/.*"loss": ([^,]+),.*/\1/' "$OUT")
python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(abs(a - b) > 1e-5 * abs(b))" \
  "$pp_loss" "$one_loss" || problem "eval loss $pp_loss of the pipeline checkpoint, $one_loss of the one-rank one"
run -- generate --checkpoint "$TMP/pprun" --prompt "The " --tokens 5 --seed 1
expect_rc 0
expect_no_crash
finish

begin "resume refuses a checkpoint whose logical shapes differ from the recipe's"
run -- train "$TINY" --set run.steps=4 --set parallel.tensor=2 --set model.hidden=64 --set "run.out_dir=$TMP/tpshape" \
  "--resume=$TPRUN" --override-schedule
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "model.safetensors: 'wte.weight' has shape [384,128], the model expects [384,64]"
finish

# ---- numerical guards (run.on_nan) ---------------------------------------------------------------

# lr 1e6 without clipping: step 1 is finite, step 2's gradient norm is NaN.
DIVERGE=(--set optimizer.lr=1e6 --set optimizer.clip_grad_norm=0 --set lr_schedule.warmup_steps=0 --set log.interval=1
         --set checkpoint.interval=1)
begin "a NaN gradient norm stops the run naming the step and the last good checkpoint"
run -- train "$TINY" "${DIVERGE[@]}" --set run.steps=4 --set "run.out_dir=$TMP/nan-stop"
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "step 2: loss " "the run stops before updating on it (run.on_nan = \"stop\"); last good checkpoint: $TMP/nan-stop/checkpoints/step_1"
[ -e "$TMP/nan-stop/checkpoints/step_2" ] && problem "a checkpoint of the NaN step was written"
finish

begin "run.on_nan = skip leaves the parameters as they were and counts the skipped steps"
run -- train "$TINY" "${DIVERGE[@]}" --set run.steps=4 --set run.on_nan=skip --set "run.out_dir=$TMP/nan-skip"
expect_rc 0
expect_no_crash
grep -aqF "skipped, no update (1 step skipped so far" "$OUT" "$ERR" || problem "no warning names the skipped step"
grep -q '"skipped_steps": 3' "$TMP/nan-skip/metrics.jsonl" || problem "step 4's record does not count 3 skipped steps"
cmp -s "$TMP/nan-skip/checkpoints/step_1/model.safetensors" "$TMP/nan-skip/checkpoints/step_4/model.safetensors" ||
  problem "the skipped steps changed the parameters"
finish

# ---- checkpoints that scale, and a full disk -------------------------------------------------------

begin "a checkpoint line gives its size and rate"
run -- train "$TINY" --set run.steps=2 --set "run.out_dir=$TMP/full-disk"
expect_rc 0
grep -aqE "checkpoint .*/step_2 \([0-9.]+ MB in [0-9.]+ s, [0-9]+ MB/s\)" "$OUT" "$ERR" || problem "no size and rate on the checkpoint line"
finish

# A file-size limit of 4 MiB makes the optimizer file's writes fail, as a full disk would (SIGXFSZ ignored).
begin "a failed checkpoint write leaves the previous checkpoint intact and says so"
(trap '' XFSZ; ulimit -f 4096; exec "$WEFT" train "$TINY" --set run.steps=4 --set "run.out_dir=$TMP/full-disk" --resume --override-schedule) \
  >"$OUT" 2>"$ERR" </dev/null
rc=$?
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "write failed" "the checkpoint of step 4 was not written, the last complete one is $TMP/full-disk/checkpoints/step_2"
[ "$(cat "$TMP/full-disk/checkpoints/latest")" = "step_2" ] || problem "latest moved"
[ "$(ls "$TMP/full-disk/checkpoints")" = "$(printf 'latest\nstep_2')" ] || problem "left behind: $(ls "$TMP/full-disk/checkpoints" | tr '\n' ' ')"
run -- train "$TINY" --set run.steps=4 --set "run.out_dir=$TMP/full-disk" --resume --override-schedule
expect_rc 0
finish

begin "checkpoint.async writes the same checkpoints while training goes on"
run -- train "$TINY" --set run.steps=6 --set checkpoint.interval=2 --set checkpoint.async=true --set parallel.data=2 \
  --set "run.out_dir=$TMP/async"
expect_rc 0
expect_no_crash
run -- train "$TINY" --set run.steps=6 --set checkpoint.interval=2 --set parallel.data=2 --set "run.out_dir=$TMP/sync"
expect_rc 0
for s in 2 4 6; do
  for f in model.safetensors optimizer.safetensors meta.json; do
    cmp -s "$TMP/async/checkpoints/step_$s/$f" "$TMP/sync/checkpoints/step_$s/$f" || problem "step_$s/$f differs"
  done
done
[ "$(cat "$TMP/async/checkpoints/latest")" = "step_6" ] || problem "latest is not step_6"
finish

begin "a failed async save leaves the previous checkpoint intact and says so"
(trap '' XFSZ; ulimit -f 4096; exec "$WEFT" train "$TINY" --set run.steps=8 --set checkpoint.interval=2 \
  --set checkpoint.async=true --set "run.out_dir=$TMP/async" --resume --override-schedule) >"$OUT" 2>"$ERR" </dev/null
rc=$?
expect_rc 2
expect_one_error_line
expect_err_has "write failed" "the checkpoint of step 8 was not written, the last complete one is $TMP/async/checkpoints/step_6"
[ "$(cat "$TMP/async/checkpoints/latest")" = "step_6" ] || problem "latest moved"
ls -d "$TMP"/async/checkpoints/*tmp* >/dev/null 2>&1 && problem "a temporary folder was left behind"
finish

refuse "moe_experts not divisible by parallel.expert" "$SRC/examples/gpt-moe.toml" --set parallel.data=3 \
  --set parallel.expert=3 --set batch.global=6 -- "model.moe_experts: moe_experts 8 is not divisible by parallel.expert 3"
refuse "moe_top_k above moe_experts" "$SRC/examples/gpt-moe.toml" --set model.moe_top_k=9 -- \
  "model.moe_top_k: moe_top_k 9 exceeds moe_experts 8"
refuse "expert size that does not divide data" "$SRC/examples/gpt-moe.toml" --set parallel.data=2 \
  --set parallel.expert=4 -- "parallel.expert: expert 4 does not divide data 2"
refuse "MoE blocks with sequence parallelism" "$SRC/examples/gpt-moe.toml" --set parallel.tensor=2 \
  --set parallel.tensor_parallel.sequence_parallel=true -- \
  "model.moe_experts: mixture-of-experts blocks with sequence parallelism are not available in this version"

# ---- pipeline parallelism ------------------------------------------------------------------------

refuse "more pipeline stages than blocks" "$TINY" --set parallel.pipeline=8 -- \
  "--set parallel.pipeline=8: parallel.pipeline: pipeline 8 stages for 4 blocks (model.layers): every stage needs at least one block"
refuse "layers_per_stage that does not sum to the blocks" "$TINY" --set parallel.pipeline=2 \
  --set "parallel.pipeline_schedule.layers_per_stage=[3,2]" -- \
  "parallel.pipeline_schedule.layers_per_stage: layers_per_stage sums to 5 blocks, the model has 4 (model.layers)"
refuse "virtual_stages that does not divide a stage's blocks" "$TINY" --set parallel.pipeline=2 \
  --set parallel.pipeline_schedule.plugin=interleaved --set "parallel.pipeline_schedule.layers_per_stage=[3,1]" -- \
  "parallel.pipeline_schedule.virtual_stages: virtual_stages 2 does not divide the 3 blocks of stage 0"
refuse "interleaved schedule with a microbatch count it cannot run" "$TINY" --set parallel.pipeline=4 \
  --set parallel.pipeline_schedule.plugin=interleaved --set model.layers=8 --set batch.micro=4 -- \
  "parallel.pipeline_schedule.virtual_stages: the interleaved schedule runs microbatches in groups of pipeline 4: 2 microbatches per step"

begin "check draws the pipeline schedule of examples/gpt-3d.toml"
run -- check "$SRC/examples/gpt-3d.toml"
expect_rc 0
expect_no_crash
expect_out_has "# pipeline: 2 stages x 1 model chunk, schedule 1f1b, 4 microbatches per step" \
  "#   stage 0: layers 0-2 (embedding, blocks 0-1)" "#   stage 1: layers 3-5 (blocks 2-3, head)" \
  "#   stage 0 | F0 F1 .  .  B0 B0 F2 B1 B1 F3 B2 B2 .  B3 B3" \
  "#   stage 1 | .  F0 B0 B0 F1 B1 B1 F2 B2 B2 F3 B3 B3 .  ." "# pipeline bubble: 20.0% of stage time idle" \
  "# WorldSize = TP x PP x DP x EP: 8 = 2 x 2 x 2 x 1, DP = data / expert = 2 / 1" \
  "GradAccum = GlobalBatch / (MicroBatch x data) = 8 / (1 x 2) = 4"
finish

# ---- train, eval, generate, and damaged inputs to them ------------------------------------------

RUN=$TMP/run
begin "train gpt-tiny 3 steps"
run -- train "$SRC/examples/gpt-tiny.toml" --set run.steps=3 --set log.interval=1 --set "run.out_dir=$RUN"
expect_rc 0
expect_no_crash
for f in recipe.toml metrics.jsonl checkpoints/latest checkpoints/step_3/model.safetensors \
         checkpoints/step_3/optimizer.safetensors checkpoints/step_3/meta.json; do
  [ -f "$RUN/$f" ] || problem "missing $f"
done
[ "$(wc -l <"$RUN/metrics.jsonl")" -eq 3 ] || problem "metrics.jsonl should have 3 records"
finish

TEXT=$TMP/eval.txt
printf 'The quick brown fox jumps over the lazy dog. %.0s' $(seq 1 40) >"$TEXT"
begin "eval prints one JSON line with the mean loss"
run -- eval --checkpoint "$RUN" --text "$TEXT"
expect_rc 0
expect_no_crash
[ "$(wc -l <"$OUT")" -eq 1 ] || problem "expected one line"
grep -qE '^\{"checkpoint": "[^"]+", "step": 3, "loss": [0-9.e+-]+, "perplexity": [0-9.e+-]+, "tokens": [0-9]+, "windows": 28, "seq_length": 64\}$' "$OUT" || problem "unexpected output"
finish

begin "generate continues the prompt"
run -- generate --checkpoint "$RUN/checkpoints/step_3" --prompt "The " --tokens 20 --seed 7
expect_rc 0
expect_no_crash
grep -q '^The ' "$OUT" || problem "output does not start with the prompt"
finish

# A model whose vocabulary is mostly ids the byte tokenizer cannot decode
# (4000 of 4257): generation must sample only the decodable ones.
begin "generate from a model with a vocabulary beyond the tokenizer's"
run -- train "$R/base.toml" --set run.steps=1 --set "run.out_dir=$TMP/wide" --set model.vocab_size=4257
expect_rc 0
run -- generate --checkpoint "$TMP/wide" --prompt "ab" --tokens 40 --seed 3
expect_rc 0
expect_no_crash
grep -q '^ab' "$OUT" || problem "output does not start with the prompt"
finish

begin "eval of a missing text file"
run -- eval --checkpoint "$RUN" --text "$TMP/nope.txt"
expect_rc 2
expect_one_error_line
expect_err_has "nope.txt"
expect_no_crash
finish

begin "eval of a text shorter than one window"
printf 'short' >"$TMP/short.txt"
run -- eval --checkpoint "$RUN" --text "$TMP/short.txt"
expect_rc 2
expect_one_error_line
expect_err_has "short.txt" "one sample needs seq_length + 1 = 65 tokens"
expect_no_crash
finish

begin "eval of a folder that is not a checkpoint"
run -- eval --checkpoint "$TMP" --text "$TEXT"
expect_rc 2
expect_one_error_line
expect_err_has "not a checkpoint"
expect_no_crash
finish

BROKEN=$TMP/broken
cp -r "$RUN/checkpoints/step_3" "$BROKEN"
head -c 1000 "$RUN/checkpoints/step_3/model.safetensors" >"$BROKEN/model.safetensors"
begin "eval of a truncated model.safetensors"
run -- eval --checkpoint "$BROKEN" --text "$TEXT"
expect_rc 2
expect_one_error_line
expect_err_has "model.safetensors" "offset"
expect_no_crash
finish

begin "resume from a truncated checkpoint"
run -- train "$SRC/examples/gpt-tiny.toml" --set run.steps=5 --set "run.out_dir=$TMP/run2" "--resume=$BROKEN" --override-schedule
expect_rc 2
expect_one_error_line
expect_err_has "model.safetensors"
expect_no_crash
finish

begin "synthetic ids beyond the model's vocabulary"
run -- train "$R/base.toml" --set run.steps=1 --set "run.out_dir=$TMP/run5" --set model.vocab_size=300 \
  --set data.vocab=301
expect_rc 2
expect_one_error_line
expect_err_has "--set data.vocab=301: data.vocab: 301 exceeds the model's vocabulary of 300"
expect_no_crash
[ -e "$TMP/run5" ] && problem "a refused run left $TMP/run5 behind"
finish

begin "text data file that does not exist"
run -- train "$SRC/examples/gpt-tiny.toml" --set run.steps=1 --set "run.out_dir=$TMP/run3" --set "data.files=$TMP/missing.txt"
expect_rc 2
expect_one_error_line
expect_err_has "missing.txt"
expect_no_crash
finish

# ---- check builds what train builds (issue 21) --------------------------------------------------

# same_refusal NAME ARGS...: check and train (with the same arguments) both
# exit 2 with the same one-line message.
same_refusal() {
  local name=$1
  shift
  begin "check refuses what train refuses: $name"
  run -- check "$@"
  expect_rc 2
  expect_one_error_line
  expect_no_crash
  cp "$ERR" "$TMP/check.err"
  run -- train "$@" --set "run.out_dir=$TMP/refused"
  expect_rc 2
  if ! diff -q "$TMP/check.err" "$ERR" >/dev/null; then
    problem "check said '$(head -c 300 "$TMP/check.err")', train said '$(head -c 300 "$ERR")'"
  fi
  [ -e "$TMP/refused" ] && problem "a refused run left $TMP/refused behind"
  finish
}
same_refusal "3 pipeline stages for 1 layer" "$R/base.toml" --set parallel.pipeline=3
same_refusal "a data file that does not exist" "$SRC/examples/gpt-tiny.toml" --set "data.files=$TMP/missing.txt"
same_refusal "expert 2 on a dense model" "$R/base.toml" --set parallel.data=2 --set parallel.expert=2
if ! ls /dev/nvidia0 >/dev/null 2>&1; then
  same_refusal "nccl without a GPU" "$R/base.toml" --set comm.plugin=nccl
fi

begin "check names the unused expert key"
run -- check "$R/base.toml" --set parallel.data=2 --set parallel.expert=2
expect_rc 2
expect_err_has "--set parallel.expert=2: parallel.expert: expert 2 but model 'gpt' has no expert parameters"
finish

# Three percent-line documents of 12, 11 and 10 bytes: 33 + 3 end-of-text
# tokens = 36, so (36 - 1) / 16 = 2 samples of 17 tokens.
mkdir -p "$TMP/data1"
printf 'hello world\n%%\nsecond doc\n%%\nthird one\n' >"$TMP/data1/docs.txt"
cp "$R/base.toml" "$TMP/data1/r.toml"
printf '[tokenizer]\n' >>"$TMP/data1/r.toml"
begin "check opens the data and reports its size"
run -- check "$TMP/data1/r.toml" --set data.plugin=text --set "data.files=$TMP/data1/docs.txt" \
  --set data.documents=percent-line --set run.steps=4 --set batch.micro=1
expect_rc 0
expect_no_crash
expect_out_has "# data: text; per epoch 3 documents, 36 tokens, 2 samples of 17 tokens; 4 steps x 1 samples cover 2 epochs"
finish

# ---- --set plugin switches and --unset -----------------------------------------------------------

begin "--set data.plugin=synthetic drops the text plugin's keys"
run -- check "$SRC/examples/gpt-tiny.toml" --set data.plugin=synthetic
expect_rc 0
expect_no_crash
expect_out_has '# note: data.plugin = "synthetic" (--set) drops data.documents, data.files' 'plugin = "synthetic"'
if grep -aq '^documents = ' "$OUT"; then problem "data.documents is still in the resolved recipe"; fi
finish

begin "--unset restores the default"
run -- check "$SRC/examples/gpt-tiny.toml" --unset lr_schedule.warmup_steps --unset run.steps
expect_rc 0
expect_no_crash
expect_out_has "warmup_steps = 0" "steps = 100"
finish

refuse "--unset of a key the recipe does not set" "$R/base.toml" --unset run.seed -- \
  "--unset run.seed: run.seed is not set by the recipe; nothing to unset"
refuse "--unset of an unknown section" "$R/base.toml" --unset modle.layers -- \
  "--unset modle.layers: unknown section [modle] (did you mean [model]?)"

# ---- CLI forms and hints -------------------------------------------------------------------------

refuse "unknown key in another tool's spelling" "$(replace numlayers 'layers = 1' 'num_layers = 1')" -- \
  "numlayers.toml:3:1: model.num_layers: unknown key (did you mean 'layers'?)"
refuse "--set hidden_size" "$R/base.toml" --set model.hidden_size=64 -- \
  "--set model.hidden_size=64: model.hidden_size: unknown key (did you mean 'hidden'?)"

begin "train --resume RECIPE resumes that recipe's run"
run -- train "$R/base.toml" --set run.steps=1 --set "run.out_dir=$TMP/resume8"
expect_rc 0
run -- train --resume "$R/base.toml" --set run.steps=2 --set "run.out_dir=$TMP/resume8"
expect_rc 0
expect_no_crash
expect_out_has "resumed from $TMP/resume8/checkpoints/step_1 at step 1"
[ -d "$TMP/resume8/checkpoints/step_2" ] || problem "no step_2 checkpoint"
finish

begin "train without a recipe"
run -- train --resume "$TMP/resume8"
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "a recipe is required"
finish

# Colour codes only on a terminal of weft's own: under a launcher the
# terminal is mpirun's pseudo-terminal, whatever the job's output goes to.
if command -v script >/dev/null 2>&1 && script -qec true /dev/null >/dev/null 2>&1; then
  begin "log colours only on a terminal, never under a launcher"
  script -qec "$WEFT train $R/base.toml --set run.steps=1 --set run.out_dir=$TMP/colour1" /dev/null >"$TMP/tty.out" 2>&1
  if ! grep -aq $'\x1b\[' "$TMP/tty.out"; then problem "no colour on a terminal (the test's pty does not work?)"; fi
  script -qec "env OMPI_COMM_WORLD_SIZE=1 $WEFT train $R/base.toml --set comm.plugin=local --set run.steps=1 --set run.out_dir=$TMP/colour2" \
    /dev/null >"$TMP/mpi.out" 2>&1
  grep -aq "step 1/1" "$TMP/mpi.out" || problem "the launched run did not train: $(head -c 300 "$TMP/mpi.out")"
  if grep -aq $'\x1b\[' "$TMP/mpi.out"; then problem "colour codes under a launcher"; fi
  run -- train "$R/base.toml" --set run.steps=1 --set "run.out_dir=$TMP/colour3"
  if grep -aq $'\x1b\[' "$OUT"; then problem "colour codes in redirected output"; fi
  finish
fi

# ---- eval: names, perplexity, the data plugin's documents, several checkpoints -------------------

# 40 documents of 45 bytes separated by "%" lines (gpt-tiny splits on them):
# 40 x 45 + 40 end-of-text = 1840 tokens, 28 windows of 64; the raw file
# (1878 bytes) would give 29.
DOCS=$TMP/docs.txt
for i in $(seq 1 40); do
  printf 'The quick brown fox jumps over the lazy dog.\n'
  [ "$i" -lt 40 ] && printf '%%\n'
done >"$DOCS"
begin "eval names checkpoint and step, adds perplexity, splits documents as training did"
run -- eval --checkpoint "$RUN" --text "$DOCS"
expect_rc 0
expect_no_crash
python3 - "$OUT" "$RUN/checkpoints/step_3" <<'PY' || problem "eval line: $(head -c 300 "$OUT")"
import json, math, sys
lines = open(sys.argv[1]).read().splitlines()
assert len(lines) == 1, lines
j = json.loads(lines[0])
assert j["checkpoint"] == sys.argv[2], j
assert j["step"] == 3, j
assert j["windows"] == 28 and j["tokens"] == 28 * 64 and j["seq_length"] == 64, j
assert abs(j["perplexity"] - math.exp(j["loss"])) <= 1e-9 * j["perplexity"], j
PY
finish

begin "eval of several checkpoints gives one line each"
run -- train "$SRC/examples/gpt-tiny.toml" --set run.steps=2 --set checkpoint.interval=1 --set "run.out_dir=$TMP/run7"
expect_rc 0
run -- eval --checkpoint "$TMP/run7/checkpoints/step_1" "$TMP/run7/checkpoints/step_2" --text "$DOCS"
expect_rc 0
expect_no_crash
python3 - "$OUT" <<'PY' || problem "eval lines: $(head -c 400 "$OUT")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]).read().splitlines()]
assert [l["step"] for l in lines] == [1, 2], lines
assert lines[0]["loss"] != lines[1]["loss"], lines
PY
finish

# ---- binary files as text --------------------------------------------------------------------------

begin "eval refuses a binary file as text"
run -- eval --checkpoint "$RUN" --text "$WEFT"
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "--text $WEFT: data.files: '$WEFT' is not text: NUL byte at offset" "dataset plugin"
finish

begin "train refuses a binary file as text"
run -- train "$SRC/examples/gpt-tiny.toml" --set run.steps=1 --set "run.out_dir=$TMP/run10" --set "data.files=$WEFT"
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "is not text: NUL byte at offset"
finish

# ---- the end of a run ---------------------------------------------------------------------------

begin "train ends with a summary; metrics carry time; the progress line shows memory"
run -- train "$SRC/examples/gpt-tiny.toml" --set run.steps=3 --set log.interval=1 --set "run.out_dir=$TMP/run11"
expect_rc 0
expect_no_crash
last=$(grep -a . "$OUT" | tail -n 1)
case "$last" in
  *"done: 3 steps (1 to 3) in "*" s, 1536 tokens, final loss "*", last checkpoint $TMP/run11/checkpoints/step_3") ;;
  *) problem "last line: $last" ;;
esac
grep -aq "| mem [0-9.]* MiB" "$OUT" || problem "no memory on the progress line"
python3 - "$TMP/run11/metrics.jsonl" "$last" <<'PY' || problem "metrics/summary mismatch"
import json, re, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
times = [r["time"] for r in recs]
assert len(times) == 3 and all(t > 0 for t in times) and times == sorted(times), times
final = float(re.search(r"final loss ([0-9.]+)", sys.argv[2]).group(1))
assert abs(final - recs[-1]["loss"]) < 1e-4, (final, recs[-1]["loss"])
PY
finish

# ---- paths: data.files relative to the recipe, out_dir to the working directory ---------------------

mkdir -p "$TMP/paths9/recipes" "$TMP/paths9/cwd"
printf 'one\n%%\ntwo\n' >"$TMP/paths9/recipes/corpus.txt"
cp "$R/base.toml" "$TMP/paths9/recipes/r.toml"
printf 'out_dir = "out"\n' >>"$TMP/paths9/recipes/r.toml"
sed -i 's/^plugin = "synthetic"$/plugin = "text"\nfiles = ["corpus.txt"]\ndocuments = "percent-line"/' "$TMP/paths9/recipes/r.toml"
sed -i 's/^seq_length = 16$/seq_length = 4/' "$TMP/paths9/recipes/r.toml"
begin "data.files is relative to the recipe, out_dir to the working directory"
(cd "$TMP/paths9/cwd" && timeout 60 "$WEFT" check ../recipes/r.toml >"$OUT" 2>"$ERR"); rc=$?
expect_rc 0
expect_out_has "# out_dir: $TMP/paths9/cwd/out" "# data: text; per epoch 2 documents, 10 tokens"
(cd "$TMP/paths9/cwd" && timeout 60 "$WEFT" train ../recipes/r.toml >"$OUT" 2>"$ERR"); rc=$?
expect_rc 0
[ -f "$TMP/paths9/cwd/out/metrics.jsonl" ] || problem "no metrics.jsonl under the working directory"
[ -e "$TMP/paths9/recipes/out" ] && problem "out_dir was taken relative to the recipe"

# ---- restarts, hostile inputs and plugins (docs/reliability.md) --------------------------------

# tree_sum DIR: one checksum over every file's path and bytes under DIR.
tree_sum() { (cd "$1" && find . -type f | LC_ALL=C sort | xargs -d '\n' md5sum | md5sum); }
# out_or_err_has TEXT...: the log lines go to stdout, errors to stderr.
out_or_err_has() {
  local s
  for s in "$@"; do
    if ! grep -aqF -- "$s" "$OUT" "$ERR"; then problem "output lacks: $s"; fi
  done
}
TINY=$SRC/examples/gpt-tiny.toml

# refuse_run NAME EXPECTED... -- ARGS...: weft ARGS must exit 2 with one error line holding EXPECTED.
refuse_run() {
  local name=$1
  shift
  local expected=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    expected+=("$1")
    shift
  done
  shift
  begin "$name"
  run -- "$@"
  expect_rc 2
  expect_one_error_line
  expect_no_crash
  expect_err_has "${expected[@]}"
  finish
}

FIFO=$TMP/fifo
mkfifo "$FIFO"
ln -s /dev/zero "$TMP/zero.txt"

# Damaged copies of the 3-step run, each resumed.
damaged() {
  rm -rf "$TMP/dmg"
  cp -r "$RUN" "$TMP/dmg"
}

# ---- what plugins hand the core, threads that cannot start ------------------------------------

refuse_run "a tokenizer factory that returns null" "tokenizer/fixture-null" "libfixture-hostile.so" "returned no object" -- \
  check "$R/base.toml" --set "plugins.paths=$FIX/hostile" --set tokenizer.plugin=fixture-null
refuse_run "a tokenizer whose eot is outside its vocabulary" "tokenizer/fixture-bad-eot" "end-of-text id 256" -- \
  check "$R/base.toml" --set "plugins.paths=$FIX/hostile" --set tokenizer.plugin=fixture-bad-eot

begin "a plugin adding a record without a factory is refused"
run WEFT_PLUGIN_PATH="$FIX/null-record" -- plugins
expect_rc 2
expect_no_crash
expect_err_has "libfixture-null-record.so: registration failed" "tokenizer/fixture-null-record" "without a factory"
finish

# Address-space limits cannot be set under AddressSanitizer (its shadow memory reserves terabytes
# of address space): .ci/sanitizers.sh sets WEFT_SANITIZER, and these two cases are skipped there.
if [ -n "${WEFT_SANITIZER:-}" ]; then
  echo "skip: the two failed-thread-creation cases (ulimit -v does not apply under ${WEFT_SANITIZER})"
else
  begin "failed thread creation in the CPU backend is reported, exit 1, no hang"
  # 1 GiB default thread stacks under a 6 GiB address-space limit: the pool cannot start 64 threads.
  ( ulimit -s 1048576 && ulimit -v 6291456 &&
    timeout 60 "$WEFT" train "$R/base.toml" --set backend.threads=64 --set "run.out_dir=$TMP/threads" \
      >"$OUT" 2>"$ERR" </dev/null )
  rc=$?
  [ $rc -eq 124 ] && problem "timed out"
  expect_rc 1
  expect_no_crash
  expect_err_has "cannot start thread"
  finish

  begin "failed thread creation in the local launcher is reported, exit 1, no hang"
  ( ulimit -s 1048576 && ulimit -v 6291456 &&
    timeout 60 "$WEFT" train "$R/base.toml" --set backend.threads=1 --set parallel.data=16 \
      --set "run.out_dir=$TMP/ranks" >"$OUT" 2>"$ERR" </dev/null )
  rc=$?
  [ $rc -eq 124 ] && problem "timed out"
  expect_rc 1
  expect_no_crash
  expect_err_has "comm local: cannot start the thread of rank"
  finish
fi

# ---- only regular files are read ----------------------------------------------------------------

refuse_run "a FIFO as data file" "$FIFO" "FIFO" -- \
  train "$TINY" --set run.steps=1 --set "run.out_dir=$TMP/f1" --set "data.files=$FIFO"
refuse_run "a symlink to /dev/zero as data file" "zero.txt" "character device" -- \
  train "$TINY" --set run.steps=1 --set "run.out_dir=$TMP/f2" --set "data.files=$TMP/zero.txt"
refuse_run "a FIFO as recipe" "$FIFO" "FIFO" -- check "$FIFO"
refuse_run "/dev/zero as recipe" "/dev/zero" "character device" -- check /dev/zero
printf 'include = ["fifo"]\n' >"$TMP/incfifo.toml"
refuse_run "a FIFO as include" "incfifo.toml:1:" "FIFO" -- check "$TMP/incfifo.toml"
refuse_run "a FIFO as eval text" "$FIFO" "FIFO" -- eval --checkpoint "$RUN" --text "$FIFO"
refuse_run "/dev/zero as eval text" "zero.txt" "character device" -- eval --checkpoint "$RUN" --text "$TMP/zero.txt"
mkdir -p "$TMP/evaldir"
refuse_run "a directory as eval text" "evaldir" "directory" -- eval --checkpoint "$RUN" --text "$TMP/evaldir"
damaged
rm "$TMP/dmg/checkpoints/step_3/recipe.toml" && ln -s /dev/zero "$TMP/dmg/checkpoints/step_3/recipe.toml"
refuse_run "/dev/zero as a checkpoint's recipe.toml" "recipe.toml" "character device" -- \
  eval --checkpoint "$TMP/dmg" --text "$TEXT"

# ---- safetensors ---------------------------------------------------------------------------------

damaged
rm "$TMP/dmg/checkpoints/step_3/model.safetensors" && mkfifo "$TMP/dmg/checkpoints/step_3/model.safetensors"
refuse_run "a FIFO as model.safetensors" "model.safetensors" "FIFO" -- \
  train "$TINY" --set run.steps=5 --set "run.out_dir=$TMP/dmg" --resume --override-schedule

# ---- checkpoint folders, latest and meta.json ----------------------------------------------------

begin "checkpoint.keep leaves folders that are not exactly step_N alone"
KP=$TMP/keep
mkdir -p "$KP/checkpoints/step_1_old" "$KP/checkpoints/step_abc"
echo mine >"$KP/checkpoints/step_1_old/notes.txt"
echo mine >"$KP/checkpoints/step_abc/notes.txt"
run -- train "$TINY" --set run.steps=3 --set checkpoint.interval=1 --set checkpoint.keep=1 --set "run.out_dir=$KP"
expect_rc 0
expect_no_crash
[ "$(cat "$KP/checkpoints/step_1_old/notes.txt" 2>/dev/null)" = "mine" ] || problem "step_1_old was touched"
[ "$(cat "$KP/checkpoints/step_abc/notes.txt" 2>/dev/null)" = "mine" ] || problem "step_abc was touched"
[ -f "$KP/checkpoints/step_3/meta.json" ] || problem "step_3 is missing"
[ -e "$KP/checkpoints/step_2" ] && problem "keep = 1 left step_2"
finish

damaged
rm "$TMP/dmg/checkpoints/latest" && mkfifo "$TMP/dmg/checkpoints/latest"
refuse_run "a FIFO as checkpoints/latest" "latest" "FIFO" -- \
  train "$TINY" --set run.steps=5 --set "run.out_dir=$TMP/dmg" --resume --override-schedule
damaged
rm "$TMP/dmg/checkpoints/latest" && ln -s /dev/zero "$TMP/dmg/checkpoints/latest"
refuse_run "/dev/zero as checkpoints/latest" "latest" "character device" -- \
  train "$TINY" --set run.steps=5 --set "run.out_dir=$TMP/dmg" --resume --override-schedule
damaged
rm "$TMP/dmg/checkpoints/step_3/meta.json" && mkdir "$TMP/dmg/checkpoints/step_3/meta.json"
refuse_run "a directory as meta.json" "meta.json" "directory" -- \
  train "$TINY" --set run.steps=5 --set "run.out_dir=$TMP/dmg" --resume --override-schedule
damaged
sed -i 's/"step": 3/"step": -9223372036854775807/' "$TMP/dmg/checkpoints/step_3/meta.json"
refuse_run "a negative step in meta.json" "meta.json" "key 'step'" -- \
  train "$TINY" --set run.steps=5 --set "run.out_dir=$TMP/dmg" --resume --override-schedule

# ---- restarts and the run folder -----------------------------------------------------------------

begin "a fresh run into a folder holding another run is refused and changes nothing"
before=$(tree_sum "$RUN")
run -- train "$TINY" --set run.steps=2 --set "run.out_dir=$RUN"
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "$RUN" "holds an earlier run" "--resume" "--overwrite"
[ "$(tree_sum "$RUN")" = "$before" ] || problem "the earlier run's files changed"
finish

begin "--overwrite starts over in a used folder"
cp -r "$RUN" "$TMP/ow"
run -- train "$TINY" --set run.steps=2 --set log.interval=1 --set "run.out_dir=$TMP/ow" --overwrite
expect_rc 0
expect_no_crash
[ "$(cat "$TMP/ow/checkpoints/latest")" = "step_2" ] || problem "latest: $(cat "$TMP/ow/checkpoints/latest")"
[ -e "$TMP/ow/checkpoints/step_3" ] && problem "the earlier run's step_3 is still there"
[ "$(wc -l <"$TMP/ow/metrics.jsonl")" -eq 2 ] || problem "metrics.jsonl should hold 2 records"
finish

begin "--overwrite with --resume is a usage error"
run -- train "$TINY" --overwrite --resume
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "excludes"
finish

for how in "--resume" "checkpoint.resume=true"; do
  begin "$how on a run without a checkpoint starts from scratch"
  rm -rf "$TMP/first"
  if [ "$how" = "--resume" ]; then extra=(--resume); else extra=(--set "$how"); fi
  run -- train "$TINY" --set run.steps=2 --set "run.out_dir=$TMP/first" "${extra[@]}"
  expect_rc 0
  expect_no_crash
  out_or_err_has "no checkpoint yet; starting from step 0"
  [ -f "$TMP/first/checkpoints/step_2/meta.json" ] || problem "no step_2 checkpoint"
  finish
done

begin "--resume=require on a run without a checkpoint is refused"
run -- train "--resume=require" "$TINY" --set run.steps=2 --set "run.out_dir=$TMP/nothing"
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "$TMP/nothing" "checkpoint not found"
finish

begin "resuming a finished run exits 0, says how to extend it and changes nothing"
before=$(tree_sum "$RUN")
run -- train "$TINY" --set run.steps=3 --set "run.out_dir=$RUN" --resume
expect_rc 0
expect_no_crash
out_or_err_has "finished" "raise run.steps" "lr schedule" "decay_steps"
[ "$(tree_sum "$RUN")" = "$before" ] || problem "the finished run's files changed"
finish

begin "resuming from an older checkpoint moves the later ones aside and keep counts the new branch"
BR=$TMP/branch
branch_args=(--set log.interval=1 --set checkpoint.interval=1 --set checkpoint.keep=3 --set "run.out_dir=$BR")
run -- train "$TINY" --set run.steps=4 "${branch_args[@]}"
expect_rc 0
run -- train "--resume=$BR/checkpoints/step_2" "$TINY" --set run.steps=3 "${branch_args[@]}" --override-schedule
expect_rc 0
expect_no_crash
out_or_err_has "step_3, step_4" "abandoned_after_step_2" "after step 2"
for s in 3 4; do
  [ -f "$BR/checkpoints/abandoned_after_step_2/step_$s/meta.json" ] || problem "step_$s was not moved aside"
done
[ -f "$BR/checkpoints/step_2/meta.json" ] || problem "step_2 was deleted"
[ -f "$BR/checkpoints/step_3/meta.json" ] || problem "no new step_3"
[ -e "$BR/checkpoints/step_4" ] && problem "the abandoned step_4 still looks like a checkpoint"
[ "$(cat "$BR/checkpoints/latest")" = "step_3" ] || problem "latest: $(cat "$BR/checkpoints/latest")"
[ "$(grep -c '"step": 3,' "$BR/metrics.jsonl")" -eq 1 ] || problem "metrics.jsonl should hold step 3 once"
grep -q '"step": 4,' "$BR/metrics.jsonl" && problem "metrics.jsonl still holds the abandoned step 4"
finish

damaged
rm "$TMP/dmg/metrics.jsonl" && mkfifo "$TMP/dmg/metrics.jsonl"
refuse_run "a FIFO as metrics.jsonl on resume" "metrics.jsonl" "FIFO" -- \
  train "$TINY" --set run.steps=5 --set "run.out_dir=$TMP/dmg" --resume --override-schedule
damaged
printf '{"step": 1, "loss": 2}\nnot json\n' >"$TMP/dmg/metrics.jsonl"
refuse_run "a malformed metrics.jsonl line on resume" "metrics.jsonl:2:" -- \
  train "$TINY" --set run.steps=5 --set "run.out_dir=$TMP/dmg" --resume --override-schedule
echo "not a folder" >"$TMP/outfile"
refuse_run "an out_dir that is a file" "$TMP/outfile" "not a folder" -- \
  train "$TINY" --set run.steps=1 --set "run.out_dir=$TMP/outfile"
refuse_run "an out_dir below a file" "$TMP/outfile/sub" -- \
  train "$TINY" --set run.steps=1 --set "run.out_dir=$TMP/outfile/sub"

# ---- sizes, eval output, CLI ranges, plugin search ------------------------------------------------

refuse_run "model sizes whose products would overflow" "model.seq_length" "out of range" -- \
  check "$R/base.toml" --set model.seq_length=9223372036854775807
refuse_run "a huge layer count" "model.layers" "out of range" -- check "$R/base.toml" --set model.layers=1000000000
refuse_run "--temperature nan" "not a finite number" -- \
  generate --checkpoint "$RUN" --prompt "a" --temperature nan

begin "eval of a diverged model prints valid JSON (null, not nan)"
damaged
python3 - "$TMP/dmg/checkpoints/step_3/model.safetensors" <<'PY'
import struct, sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
data[8 + n:] = b"\xff" * (len(data) - 8 - n)  # every float a NaN
open(path, "wb").write(data)
PY
run -- eval --checkpoint "$TMP/dmg" --text "$TEXT"
expect_rc 0
expect_no_crash
python3 -c 'import json,sys; d=json.loads(open(sys.argv[1]).read()); assert d["loss"] is None, d' "$OUT" 2>/dev/null ||
  problem "not valid JSON with a null loss: $(head -c 200 "$OUT")"
finish

begin "a library that is not a plugin is never loaded (its constructor would abort)"
run WEFT_PLUGIN_PATH="$FIX/ctor-abort" -- plugins
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "libfixture-ctor-abort.so: missing entry point 'weft_plugin_info'"
expect_out_has "model:" "gpt"
finish

begin "a WEFT_PLUGIN_PATH folder that does not exist is reported"
run WEFT_PLUGIN_PATH="$TMP/no-such-plugins" -- plugins
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "$TMP/no-such-plugins: plugin folder not found"
finish

# ---- lr schedule and batch on resume (docs/checkpoints.md#resuming) -------------------------------

refuse_run "a warm-up not shorter than decay_steps" "lr_schedule.warmup_steps" \
  "warm-up of 5 steps is not shorter than decay_steps 5" -- check "$TINY" --set lr_schedule.decay_steps=5
refuse_run "a wsd schedule without wsd_decay_steps" "lr_schedule.wsd_decay_steps" "must be > 0" -- \
  check "$TINY" --set lr_schedule.plugin=wsd

SR=$TMP/schedule-resume
begin "a resume with another schedule is refused naming each difference"
run -- train "$TINY" --set run.steps=4 --set checkpoint.interval=2 --set "run.out_dir=$SR"
expect_rc 0
run -- train "$TINY" --set run.steps=8 --set lr_schedule.min_lr=2e-4 --set "run.out_dir=$SR" --resume
expect_rc 2
expect_one_error_line
expect_no_crash
expect_err_has "the lr schedule differs from the checkpoint's" "decay_steps 4 -> 8" "min_lr 0.0003 -> 0.0002" \
  "--override-schedule"
finish

begin "--override-schedule continues with the recipe's schedule"
run -- train "$TINY" --set run.steps=6 --set log.interval=1 --set "run.out_dir=$SR" --resume --override-schedule
expect_rc 0
expect_no_crash
out_or_err_has "--override-schedule: continuing with the recipe's schedule (decay_steps 4 -> 6)"
python3 - "$SR/checkpoints/step_6/meta.json" <<'PY' || problem "step_6 does not record the new schedule"
import json, sys
m = json.load(open(sys.argv[1]))
assert m["lr_schedule"]["decay_steps"] == "6" and m["global_batch"] == 8 and m["samples_consumed"] == 48, m
PY
finish

begin "a global batch that divides the samples consumed continues from them"
run -- train "--resume=$SR/checkpoints/step_2" "$TINY" --set run.steps=4 --set batch.global=4 \
  --set "run.out_dir=$TMP/batch-resume"
expect_rc 0
expect_no_crash
python3 - "$TMP/batch-resume/checkpoints/step_4/meta.json" <<'PY' || problem "step_4 is not 16 + 2 x 4 samples"
import json, sys
m = json.load(open(sys.argv[1]))
assert m["samples_consumed"] == 24 and m["global_batch"] == 4 and m["step"] == 4, m
PY
finish

refuse_run "a global batch that does not divide the samples consumed" "saved after 16 samples at step 2" \
  "batch.global 6 does not divide" -- \
  train "--resume=$SR/checkpoints/step_2" "$TINY" --set run.steps=4 --set batch.global=6 --set "run.out_dir=$TMP/batch6"

begin "run.exit_interval stops with a checkpoint and --resume goes on"
EX=$TMP/exit-interval
run -- train "$TINY" --set run.steps=6 --set run.exit_interval=4 --set log.interval=1 --set "run.out_dir=$EX"
expect_rc 0
expect_no_crash
out_or_err_has "stopped by run.exit_interval after step 4 of 6"
[ "$(cat "$EX/checkpoints/latest" 2>/dev/null)" = "step_4" ] || problem "latest is not step_4"
run -- train "$TINY" --set run.steps=6 --set run.exit_interval=4 --set log.interval=1 --set "run.out_dir=$EX" --resume
expect_rc 0
[ "$(cat "$EX/checkpoints/latest" 2>/dev/null)" = "step_6" ] || problem "the resumed run did not reach step_6"
finish

begin "run.exit_duration_mins stops every rank after the same step"
run -- train "$TINY" --set run.steps=4 --set run.exit_duration_mins=1e-9 --set parallel.data=2 \
  --set "run.out_dir=$TMP/exit-duration"
expect_rc 0
expect_no_crash
out_or_err_has "stopped by run.exit_duration_mins after step 1 of 4"
[ "$(cat "$TMP/exit-duration/checkpoints/latest" 2>/dev/null)" = "step_1" ] || problem "latest is not step_1"
finish

# ---- Hugging Face folders: weft export --format hf, [model] init_from -----------------------------

LLAMA=$SRC/examples/llama-tiny.toml
HFRUN=$TMP/hf-run
HF=$TMP/hf
begin "export writes config.json and model.safetensors by Hugging Face names"
run -- train "$LLAMA" --set run.steps=1 --set "run.out_dir=$HFRUN"
expect_rc 0
run -- export --checkpoint "$HFRUN" --format hf "$HF"
expect_rc 0
expect_no_crash
expect_out_has "as LlamaForCausalLM to $HF"
python3 - "$HF" <<'PY' || problem "the folder's config.json or tensor names are not Llama's"
import json, struct, sys
d = sys.argv[1]
c = json.load(open(d + "/config.json"))
assert c["architectures"] == ["LlamaForCausalLM"] and c["model_type"] == "llama", c
assert (c["vocab_size"], c["hidden_size"], c["num_hidden_layers"], c["num_key_value_heads"]) == (257, 128, 4, 2), c
assert c["tie_word_embeddings"] is False and c["torch_dtype"] == "float32", c
with open(d + "/model.safetensors", "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    h = json.loads(f.read(n))
assert h["__metadata__"]["format"] == "pt", h["__metadata__"]
assert h["model.embed_tokens.weight"]["shape"] == [257, 128], h["model.embed_tokens.weight"]
assert h["lm_head.weight"]["shape"] == [257, 128]
assert h["model.layers.3.self_attn.k_proj.weight"]["shape"] == [64, 128]
assert "model.norm.weight" in h and not any(k.startswith("blocks.") for k in h)
PY
finish

begin "init_from starts a run from the exported folder"
run -- train "$LLAMA" --set run.steps=2 --set run.exit_interval=1 --set "run.out_dir=$TMP/hf-init" \
  --set "model.init_from=$HF"
expect_rc 0
expect_no_crash
out_or_err_has "initialised the parameters from $HF"
finish

begin "a resume ignores init_from: the checkpoint wins"
run -- train "$LLAMA" --set run.steps=2 --set run.exit_interval=1 --set "run.out_dir=$TMP/hf-init" \
  --set "model.init_from=$TMP/no-such" --resume
expect_rc 0
expect_no_crash
out_or_err_has "resumed from $TMP/hf-init/checkpoints/step_1 at step 1"
[ "$(cat "$TMP/hf-init/checkpoints/latest" 2>/dev/null)" = "step_2" ] || problem "the resumed run did not reach step_2"
finish

begin "a llama with SwiGLU experts trains under expert parallelism"
run -- train "$LLAMA" --set run.steps=1 --set "run.out_dir=$TMP/hf-moe" --set model.moe_experts=4 \
  --set parallel.data=2 --set parallel.expert=2
expect_rc 0
expect_no_crash
finish
refuse_run "export refuses a mixture-of-experts model" "model.moe_experts 4: LlamaForCausalLM and Qwen2ForCausalLM have no mixture-of-experts blocks" -- \
  export --checkpoint "$TMP/hf-moe" --format hf "$TMP/hf-moe-out"

# Damaged copies of the folder, each refused before the run starts.
hf_copy() {
  rm -rf "$TMP/hfbad"
  cp -r "$HF" "$TMP/hfbad"
}
hf_config() {  # hf_config KEY JSON: sets a key of the copy's config.json
  python3 - "$TMP/hfbad/config.json" "$1" "$2" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c[sys.argv[2]] = json.loads(sys.argv[3])
json.dump(c, open(sys.argv[1], "w"))
PY
}
hf_tensors() {  # hf_tensors PYTHON: edits the header dict h of the copy's model.safetensors (data kept)
  python3 - "$TMP/hfbad/model.safetensors" "$1" <<'PY'
import json, struct, sys
p = sys.argv[1]
raw = open(p, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
exec(sys.argv[2])
head = json.dumps(h).encode()
head += b" " * (-len(head) % 8)
open(p, "wb").write(struct.pack("<Q", len(head)) + head + raw[8 + n:])
PY
}
hf_refused() {  # hf_refused NAME EXPECTED...: train from the copy must be refused
  local name=$1
  shift
  refuse_run "init_from refuses $name" "model.init_from: " "$@" -- \
    train "$LLAMA" --set run.steps=1 --set "run.out_dir=$TMP/hf-bad-run" --set "model.init_from=$TMP/hfbad"
}
hf_copy; hf_config hidden_size 64
hf_refused "a config.json of another size" "$TMP/hfbad/config.json: hidden_size 64, the recipe's model has 128 (model.hidden)"
refuse "init_from of another size" "$LLAMA" --set "model.init_from=$TMP/hfbad" -- \
  "model.init_from: $TMP/hfbad/config.json: hidden_size 64, the recipe's model has 128 (model.hidden)"
hf_copy; hf_config num_key_value_heads 4
hf_refused "other kv heads" "num_key_value_heads 4, the recipe's model has 2 (model.kv_heads)"
hf_copy; hf_config rope_theta 500000.0
hf_refused "another RoPE base" "rope_theta 500000.0, the recipe's model has 10000.0 (model.rope_theta)"
hf_copy; hf_config architectures '["MistralForCausalLM"]'
hf_refused "an unsupported architecture" \
  "unsupported architecture 'MistralForCausalLM' (the llama model reads LlamaForCausalLM, Qwen2ForCausalLM)"
hf_copy; hf_config architectures '["Qwen2ForCausalLM"]'
hf_refused "Qwen2 for a model without q/k/v biases" "architecture 'Qwen2ForCausalLM', the recipe's llama model is LlamaForCausalLM"
hf_copy; hf_tensors 'h["model.layers.0.mlp.up_proj.weight"]["shape"] = [128, 256]'
hf_refused "a tensor of another shape" \
  "model.safetensors: 'model.layers.0.mlp.up_proj.weight' has shape [128,256], the model expects [256,128]"
hf_copy; hf_tensors 'h["model.layers.1.attn_renamed"] = h.pop("model.layers.1.self_attn.q_proj.weight")'
hf_refused "a missing tensor" "model.safetensors: missing tensor 'model.layers.1.self_attn.q_proj.weight' (weft's blocks.1.attn.q.weight)"
hf_copy; rm "$TMP/hfbad/config.json"
hf_refused "a folder without config.json" "config.json"
refuse_run "init_from names the file of gpt's model" "model.init_from: " "unsupported architecture 'LlamaForCausalLM' (the gpt model reads GPT2LMHeadModel)" -- \
  train "$TINY" --set run.steps=1 --set "run.out_dir=$TMP/hf-gpt-run" --set "model.init_from=$HF"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
