#!/usr/bin/env bash
# The third-party plugin path, as a plugin author walks it (docs/plugins.md):
# install this build into a temporary folder (meson install --destdir), then
# with LD_LIBRARY_PATH unset and only pkg-config's flags:
#   1. the installed weft runs and lists its installed plugins with their files;
#   2. every installed SDK header compiles on its own;
#   3. the tokenizer example of docs/plugins.md compiles, as written, into a plugin weft loads;
#   4. examples/plugin-template builds (meson, dependency('weft')), its test passes,
#      the installed weft lists its two plugins and trains its recipe with them.
# usage: test_plugin_kit.sh BUILD_ROOT SOURCE_ROOT
set -u
BUILD=$1
SRC=$2
TMP=$(mktemp -d "${TMPDIR:-/tmp}/weft-kit-XXXXXX")
trap 'rm -rf "$TMP"' EXIT
unset LD_LIBRARY_PATH WEFT_PLUGIN_PATH OMPI_COMM_WORLD_SIZE PMI_SIZE PMIX_SIZE WORLD_SIZE
failed=0
step() { echo "== $*"; }
fail() {
  echo "FAIL: $*"
  failed=1
}
option() { meson introspect "$BUILD" --buildoptions | python3 -c "import json,sys; print(next(o['value'] for o in json.load(sys.stdin) if o['name'] == '$1'))"; }

step "install into $TMP/dest"
DEST=$TMP/dest
meson install -C "$BUILD" --destdir "$DEST" --no-rebuild --quiet >"$TMP/install.log" 2>&1 || {
  cat "$TMP/install.log"
  echo "FAIL: meson install"
  exit 1
}
PREFIX=$(option prefix)
LIBDIR=$(option libdir)
ROOT=$DEST$PREFIX
WEFT=$ROOT/bin/weft
export PKG_CONFIG_PATH=$ROOT/$LIBDIR/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$DEST  # weft.pc names $PREFIX; the files are under $DEST
CXXFLAGS_WEFT=$(pkg-config --cflags weft) || fail "pkg-config --cflags weft"
LIBS_WEFT=$(pkg-config --libs weft) || fail "pkg-config --libs weft"

step "1. the installed weft, no LD_LIBRARY_PATH"
"$WEFT" --version >"$TMP/out" 2>&1 || fail "installed weft does not start: $(head -c 300 "$TMP/out")"
"$WEFT" plugins >"$TMP/out" 2>&1 || fail "weft plugins exits $?: $(head -c 300 "$TMP/out")"
grep -qF "from $ROOT/$LIBDIR/weft/plugins/libweft-backend-cpu.so" "$TMP/out" ||
  fail "weft plugins does not show the installed cpu backend's file"

step "2. every installed header on its own"
for h in "$ROOT"/include/weft/*.hpp; do
  echo "#include \"weft/$(basename "$h")\"" | c++ -std=c++20 $CXXFLAGS_WEFT -fsyntax-only -x c++ - 2>"$TMP/err" ||
    fail "weft/$(basename "$h") does not compile alone: $(head -c 300 "$TMP/err")"
done

step "3. the example of docs/plugins.md"
python3 - "$SRC/docs/plugins.md" "$TMP/upper_bytes.cpp" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
block = next(b for b in re.findall(r"^```cpp\n(.*?)^```", text, re.S | re.M) if "upper-bytes" in b)
open(sys.argv[2], "w").write(block)
PY
mkdir -p "$TMP/upper"
c++ -std=c++20 -O1 -shared -fPIC -fvisibility=hidden $CXXFLAGS_WEFT "$TMP/upper_bytes.cpp" $LIBS_WEFT \
  -o "$TMP/upper/libweft-upper-bytes.so" 2>"$TMP/err" || fail "the docs example does not compile: $(head -c 400 "$TMP/err")"
WEFT_PLUGIN_PATH=$TMP/upper "$WEFT" plugins upper-bytes >"$TMP/out" 2>&1 ||
  fail "weft does not load the docs example: $(head -c 300 "$TMP/out")"

step "4. examples/plugin-template with pkg-config alone"
meson setup "$TMP/tb" "$SRC/examples/plugin-template" >"$TMP/setup.log" 2>&1 || fail "template setup: $(tail -5 "$TMP/setup.log")"
ninja -C "$TMP/tb" >"$TMP/ninja.log" 2>&1 || fail "template build: $(grep -m3 error "$TMP/ninja.log")"
meson test -C "$TMP/tb" >"$TMP/test.log" 2>&1 || fail "template test: $(tail -20 "$TMP/tb/meson-logs/testlog.txt")"
WEFT_PLUGIN_PATH=$TMP/tb "$WEFT" plugins >"$TMP/out" 2>&1
grep -q "template-gpt" "$TMP/out" && grep -q "template-csv" "$TMP/out" && grep -qF "from $TMP/tb/libweft-template.so" "$TMP/out" ||
  fail "weft plugins does not list the template's two plugins and their file"
WEFT_PLUGIN_PATH=$TMP/tb "$WEFT" train "$SRC/examples/plugin-template/recipe.toml" --set run.steps=5 \
  --set "run.out_dir=$TMP/run" >"$TMP/out" 2>&1 || fail "training the template recipe: $(tail -3 "$TMP/out")"
[ "$(wc -l <"$TMP/run/metrics.csv" 2>/dev/null || echo 0)" -eq 2 ] ||
  fail "the template sink did not write a header and the row of step 5 to metrics.csv"

[ $failed -eq 0 ] && echo "plugin kit: all steps passed"
exit $failed
