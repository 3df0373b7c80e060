#!/usr/bin/env bash
# Build corr and run the whole test suite: a plain build (unit, stress and HTTP tests), the same
# tests under AddressSanitizer + UndefinedBehaviorSanitizer, the engine tests under
# ThreadSanitizer, and a one-minute libFuzzer run of the request-target parser (clang).
#
#   tools/test.sh            everything (10 minutes on a 2-core machine)
#   tools/test.sh --plain    only the plain build
# Build trees go to build/test-*; extra arguments after -- go to every ctest run.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/deps.sh
. "$top/tools/deps.sh"
# shellcheck disable=SC2086
corr_require_packages $CORR_BUILD_PACKAGES $CORR_TEST_PACKAGES

mode=all
if [ "${1:-}" = "--plain" ]; then
    mode=plain
    shift
fi
[ "${1:-}" = "--" ] && shift
jobs=$(nproc)
failed=()

# Configure, build and run ctest in build/test-NAME; extra cmake arguments follow NAME and LABEL.
run_suite() {
    local name=$1 label=$2
    shift 2
    local dir="$top/build/test-$name"
    echo "==== corr tests: $name ($label)" >&2
    cmake -S "$top" -B "$dir" -DCORR_BUILD_TESTS=ON "$@" >/dev/null
    cmake --build "$dir" -j "$jobs" ${build_target:+--target "$build_target"} >/dev/null
    if ! ctest --test-dir "$dir" -L "$label" --output-on-failure --timeout 600 "${ctest_args[@]}"; then
        failed+=("$name")
    fi
}
ctest_args=("$@")
build_target=

# LeakSanitizer: h2o 2.2.5 never frees its per-thread allocators and loops, by design.
export LSAN_OPTIONS="suppressions=$top/tests/lsan.supp:print_suppressions=0"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="suppressions=$top/tests/tsan.supp:halt_on_error=1:second_deadlock_stack=1"

run_suite plain 'unit|stress|http|fault|bench|fuzz|install|scaleout' -DCMAKE_BUILD_TYPE=RelWithDebInfo
if [ "$mode" = all ]; then
    run_suite asan 'unit|stress|http|fault' -DCMAKE_BUILD_TYPE=Debug -DCORR_SANITIZE=address,undefined -DCORR_BUILD_BENCH=OFF
    run_suite tsan 'unit|stress' -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCORR_SANITIZE=thread -DCORR_BUILD_SERVER=OFF \
        -DCORR_BUILD_BENCH=OFF
    build_target=fuzz_ids CC=clang run_suite fuzz fuzz -DCORR_BUILD_FUZZ=ON -DCORR_FUZZ_SECONDS=60 \
        -DCORR_BUILD_SERVER=OFF -DCORR_BUILD_BENCH=OFF
fi

if [ "${#failed[@]}" -ne 0 ]; then
    echo "corr tests: FAILED in: ${failed[*]}" >&2
    exit 1
fi
echo "corr tests: all suites passed ($mode)" >&2
