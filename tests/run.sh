#!/usr/bin/env bash
# Runs every test dicomfs has: installs what is missing, builds with
# ASan+UBSan, runs the C unit tests, the integration tests (pytest, real
# mounts against the emulator) and a short run of every fuzz target, then
# prints one summary line "N passed, N failed".
#
# Options (environment):
#   DICOMFS_LONG=1       also run the long fault/crash variants
#   FUZZ_SECONDS=N       seconds per fuzz target (default 10)
#   ONLY=unit|integration|fuzz   run one group
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

bash contrib/install-deps.sh || { echo "install-deps failed"; echo "0 passed, 1 failed"; exit 1; }

PY=/usr/bin/python3
BUILD="$top/build-san"
FUZZ_BUILD="$top/build-fuzz"
FUZZ_SECONDS=${FUZZ_SECONDS:-10}
ONLY=${ONLY:-all}
LOGDIR=$(mktemp -d /tmp/dicomfs-tests.XXXXXX)
passed=0
failed=0
failures=()

pass() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); failures+=("$1"); echo "FAIL: $1"; }

summary() {
  echo
  if [ "${#failures[@]}" -gt 0 ]; then
    echo "Failures:"
    printf '  %s\n' "${failures[@]}"
  fi
  echo "logs: $LOGDIR"
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

echo "== build (ASan+UBSan) in $BUILD"
# Modules are compiled once their .c file exists (meson checks at configure
# time), so an existing build dir is reconfigured to pick up new files.
reconf=(); [ -f "$BUILD/build.ninja" ] && reconf=(--reconfigure)
meson setup "${reconf[@]}" "$BUILD" -Db_sanitize=address,undefined -Db_lundef=false \
  >"$LOGDIR/setup.log" 2>&1 || { cat "$LOGDIR/setup.log"; fail "meson setup"; summary; }
if ! ninja -C "$BUILD" >"$LOGDIR/build.log" 2>&1; then
  tail -50 "$LOGDIR/build.log"
  fail "build"
  summary
fi
export DICOMFS_BUILD="$BUILD"

# The optimised build (used by the demo and the benchmarks) must compile too:
# -O3 brings warnings of its own, and -Werror makes them errors.
echo "== release build in $top/build-release"
rreconf=(); [ -f "$top/build-release/build.ninja" ] && rreconf=(--reconfigure)
if meson setup "${rreconf[@]}" "$top/build-release" --buildtype=release >"$LOGDIR/release.log" 2>&1 \
    && ninja -C "$top/build-release" >>"$LOGDIR/release.log" 2>&1; then
  pass
else
  grep -E "error" "$LOGDIR/release.log" | head -20
  fail "release build (see $LOGDIR/release.log)"
fi

# --- C unit tests: every test_* program prints TAP lines.
run_unit() {
  echo "== unit tests"
  local t out rc nok nfail
  for t in "$BUILD"/tests/unit/test_*; do
    [ -x "$t" ] && [ -f "$t" ] || continue
    out="$LOGDIR/unit-$(basename "$t").log"
    (cd "$top" && timeout 300 "$t") >"$out" 2>&1
    rc=$?
    nok=$(grep -cE '^ok [0-9]+' "$out")
    nfail=$(grep -cE '^not ok [0-9]+' "$out")
    passed=$((passed + nok))
    if [ "$nfail" -gt 0 ]; then
      failed=$((failed + nfail))
      while read -r line; do failures+=("$(basename "$t"): $line"); done \
        < <(grep -E '^not ok [0-9]+' "$out")
      grep -E '^(not ok|#)' "$out" | head -40
    fi
    if [ "$rc" -ne 0 ] && [ "$nfail" -eq 0 ]; then
      fail "$(basename "$t") exited $rc without a failing test (crash or sanitizer report)"
      tail -30 "$out"
    fi
    echo "  $(basename "$t"): $nok ok, $nfail not ok"
  done
}

# --- Structure checks: no include cycle among fs/ modules, every header
# says what its module owns, FUSE headers only in the FUSE layer.
run_checks() {
  echo "== structure checks"
  if "$PY" tests/tools/include_cycles.py fs >"$LOGDIR/include_cycles.log" 2>&1; then
    pass
    echo "  include_cycles: $(tail -1 "$LOGDIR/include_cycles.log")"
  else
    fail "include_cycles (see $LOGDIR/include_cycles.log)"
    cat "$LOGDIR/include_cycles.log"
  fi
}

# --- Integration tests: pytest from Debian, real mounts against the emulator.
run_integration() {
  echo "== integration tests"
  local xml="$LOGDIR/pytest.xml"
  if ! ls tests/integration/test_*.py >/dev/null 2>&1; then
    echo "  (no integration tests yet)"
    return
  fi
  local limit=1200
  [ "${DICOMFS_LONG:-0}" = 1 ] && limit=5400
  export DICOMFS_FIGURES="$LOGDIR/figures.jsonl"
  (cd "$top" && timeout "$limit" "$PY" -m pytest -q -p no:cacheprovider --junitxml="$xml" \
      tests/integration) 2>&1 | tee "$LOGDIR/pytest.log" | tail -40
  if [ -s "$DICOMFS_FIGURES" ]; then
    echo "  figures of the fault, crash and bad-input suites:"
    sed 's/^/    /' "$DICOMFS_FIGURES"
  fi
  if [ ! -s "$xml" ]; then
    fail "pytest produced no report (see $LOGDIR/pytest.log)"
    return
  fi
  local counts
  counts=$("$PY" - "$xml" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
p = f = 0
names = []
for case in root.iter("testcase"):
    bad = case.find("failure") is not None or case.find("error") is not None
    skipped = case.find("skipped") is not None
    if bad:
        f += 1
        names.append(case.get("classname", "") + "::" + case.get("name", ""))
    elif not skipped:
        p += 1
print(p, f)
for n in names:
    print(n)
PYEOF
)
  local first rest
  first=$(head -1 <<<"$counts")
  passed=$((passed + ${first% *}))
  failed=$((failed + ${first#* }))
  while read -r n; do [ -n "$n" ] && failures+=("pytest: $n"); done < <(tail -n +2 <<<"$counts")
}

# --- Fuzz smoke: each libFuzzer target runs briefly over its corpus.
run_fuzz() {
  echo "== fuzz smoke (${FUZZ_SECONDS}s per target)"
  if ! ls tests/fuzz/fuzz_*.c >/dev/null 2>&1; then
    echo "  (no fuzz targets yet)"
    return
  fi
  local freconf=(); [ -f "$FUZZ_BUILD/build.ninja" ] && freconf=(--reconfigure)
  CC=clang meson setup "${freconf[@]}" "$FUZZ_BUILD" -Dfuzz=true -Db_sanitize=address,undefined \
    -Db_lundef=false >"$LOGDIR/fuzz-setup.log" 2>&1 \
    || { tail -30 "$LOGDIR/fuzz-setup.log"; fail "fuzz build setup"; return; }
  if ! ninja -C "$FUZZ_BUILD" >"$LOGDIR/fuzz-build.log" 2>&1; then
    tail -30 "$LOGDIR/fuzz-build.log"
    fail "fuzz build"
    return
  fi
  local f name corpus work
  for f in "$FUZZ_BUILD"/tests/fuzz/fuzz_*; do
    [ -x "$f" ] && [ -f "$f" ] || continue
    name=$(basename "$f")
    name=${name#fuzz_}
    corpus="$top/tests/fuzz/corpus/$name"
    work=$(mktemp -d "$LOGDIR/corpus-$name.XXXX")
    [ -d "$corpus" ] && cp -r "$corpus/." "$work/"
    if timeout $((FUZZ_SECONDS + 60)) "$f" -max_total_time="$FUZZ_SECONDS" -max_len=65536 \
        -rss_limit_mb=2048 -print_final_stats=1 "$work" >"$LOGDIR/fuzz-$name.log" 2>&1; then
      pass
      echo "  fuzz_$name: ok ($(grep -oE 'stat::number_of_executed_units: [0-9]+' \
        "$LOGDIR/fuzz-$name.log" | awk '{print $2}') runs)"
    else
      fail "fuzz_$name (see $LOGDIR/fuzz-$name.log)"
      tail -20 "$LOGDIR/fuzz-$name.log"
    fi
  done
}

case "$ONLY" in
  unit) run_unit; run_checks ;;
  integration) run_integration ;;
  fuzz) run_fuzz ;;
  *) run_unit; run_checks; run_integration; run_fuzz ;;
esac
summary
