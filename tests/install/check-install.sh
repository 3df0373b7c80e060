#!/usr/bin/env bash
# Install a built corr tree into a temporary prefix and use it the way a consumer would:
#   - check the installed files, the SONAME and that libcorr.so exports only the corr_* API;
#   - build examples/blocking-wait out of tree with CMake (find_package(corr)) and with its
#     Makefile (pkg-config), each linking the shared and the static library, and run all four;
#   - compile corr.h as C and as C++11, and link and run a C++ program against libcorr.so.
#
#   tests/install/check-install.sh BUILD_DIR [SOURCE_DIR]
# BUILD_DIR must be built already and without sanitizers. SOURCE_DIR defaults to this checkout.
# Everything is written under a mktemp directory, which is removed on exit.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 BUILD_DIR [SOURCE_DIR]" >&2
    exit 2
fi
build=$(cd "$1" && pwd)
source_dir=$(cd "${2:-$(dirname "$0")/../..}" && pwd)
example="$source_dir/examples/blocking-wait"
# Enough jobs to race acks with timeouts, few enough to finish in about a second.
example_args=(--jobs 800)

work=$(mktemp -d "${TMPDIR:-/tmp}/corr-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
# Only the temporary prefix may provide corr: no inherited search paths.
unset PKG_CONFIG_PATH CMAKE_PREFIX_PATH LD_LIBRARY_PATH corr_DIR

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
step() {
    echo "---- $*"
}

step "cmake --install $build --prefix $prefix"
cmake --install "$build" --prefix "$prefix" >"$work/install.log"

# GNUInstallDirs picks the library directory (lib, lib64 or lib/<multiarch>) at configure time.
pc_file=$(find "$prefix" -name corr.pc -path '*/pkgconfig/*' | head -n 1)
if [ -z "$pc_file" ]; then
    fail "no corr.pc under $prefix; install log:"
    cat "$work/install.log" >&2
    exit 1
fi
pc_dir=$(dirname "$pc_file")
libdir=$(dirname "$pc_dir")

step "installed files in $prefix"
for file in include/corr.h "${libdir#"$prefix"/}/libcorr.a" "${libdir#"$prefix"/}/libcorr.so" \
    "${libdir#"$prefix"/}/cmake/corr/corrConfig.cmake" \
    "${libdir#"$prefix"/}/cmake/corr/corrConfigVersion.cmake" \
    "${libdir#"$prefix"/}/cmake/corr/corrTargets.cmake"; do
    [ -e "$prefix/$file" ] || fail "$file is not installed"
done
if grep -q '^CORR_BUILD_SERVER:BOOL=ON' "$build/CMakeCache.txt"; then
    if [ -x "$prefix/bin/corrd" ]; then
        "$prefix/bin/corrd" --version || fail "installed corrd --version exited with $?"
    else
        fail "bin/corrd is not installed"
    fi
fi

soname=$(readelf -d "$libdir/libcorr.so" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
echo "libcorr.so SONAME: ${soname:-none}"
case "$soname" in
libcorr.so.[0-9]*) [ -e "$libdir/$soname" ] || fail "$soname (the SONAME) is not installed" ;;
*) fail "libcorr.so has SONAME '$soname', expected libcorr.so.N" ;;
esac

# -fvisibility=hidden: the dynamic symbol table contains the API from corr.h and nothing else.
exported=$(nm -D --defined-only "$libdir/libcorr.so" | awk '{print $3}' | sort)
declared=$(sed -n 's/^CORR_API .*[ *]\(corr_[a-z_]*\)(.*/\1/p' "$prefix/include/corr.h" | sort)
if [ "$exported" != "$declared" ]; then
    fail "libcorr.so exports differ from the CORR_API declarations in corr.h:"
    diff <(echo "$declared") <(echo "$exported") >&2 || true
else
    echo "libcorr.so exports the $(echo "$exported" | wc -l) CORR_API functions only"
fi

# Checks that a binary needs libcorr.so ($2 = shared) or does not ($2 = static).
check_linkage() {
    local binary=$1 kind=$2 needed
    needed=$(readelf -d "$binary" | grep -c 'NEEDED.*libcorr\.so' || true)
    if [ "$kind" = shared ] && [ "$needed" -eq 0 ]; then
        fail "$binary does not link libcorr.so"
    elif [ "$kind" = static ] && [ "$needed" -ne 0 ]; then
        fail "$binary links libcorr.so, expected libcorr.a"
    fi
}

# Runs a binary built against the prefix with LD_LIBRARY_PATH set to its library directory:
#   run_binary BINARY shared|static [ARG]...
run_binary() {
    local binary=$1 kind=$2 status=0
    shift 2
    step "run $binary ($kind)"
    check_linkage "$binary" "$kind"
    LD_LIBRARY_PATH="$libdir" timeout 60 "$binary" "$@" || status=$?
    [ "$status" -eq 0 ] || fail "$binary exited with status $status"
}

step "examples/blocking-wait with CMake, CMAKE_PREFIX_PATH=$prefix"
if cmake -S "$example" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF >"$work/cmake.log" 2>&1 &&
    cmake --build "$work/cmake-build" >>"$work/cmake.log" 2>&1; then
    corr_dir=$(sed -n 's/^corr_DIR:PATH=//p' "$work/cmake-build/CMakeCache.txt")
    case "$corr_dir" in
    "$prefix"/*) echo "find_package(corr) used $corr_dir" ;;
    *) fail "find_package(corr) used $corr_dir, not the temporary prefix" ;;
    esac
    run_binary "$work/cmake-build/blocking-wait" shared "${example_args[@]}"
    run_binary "$work/cmake-build/blocking-wait-static" static "${example_args[@]}"
else
    fail "CMake build of examples/blocking-wait failed:"
    cat "$work/cmake.log" >&2
fi

step "examples/blocking-wait with make and pkg-config, PKG_CONFIG_PATH=$pc_dir"
# make writes its binaries next to the sources, so it runs on a copy.
cp -R "$example" "$work/make-build"
rm -rf "$work/make-build/build"
if PKG_CONFIG_PATH="$pc_dir" make -C "$work/make-build" >"$work/make.log" 2>&1; then
    run_binary "$work/make-build/blocking-wait" shared "${example_args[@]}"
    run_binary "$work/make-build/blocking-wait-static" static "${example_args[@]}"
else
    fail "make build of examples/blocking-wait failed:"
    cat "$work/make.log" >&2
fi

step "corr.h compiles as C11 and C++11"
corr_cflags=$(PKG_CONFIG_PATH="$pc_dir" pkg-config --cflags corr)
corr_libs=$(PKG_CONFIG_PATH="$pc_dir" pkg-config --libs corr)
printf '#include <corr.h>\n' >"$work/header.c"
printf '#include <corr.h>\n' >"$work/header.cpp"
# shellcheck disable=SC2086 # pkg-config output is meant to split into words
gcc -std=c11 -Wall -Wextra -Wpedantic -Werror -fsyntax-only $corr_cflags "$work/header.c" ||
    fail "corr.h does not compile as C11"
# shellcheck disable=SC2086
g++ -std=c++11 -Wall -Wextra -Wpedantic -Werror -fsyntax-only $corr_cflags "$work/header.cpp" ||
    fail "corr.h does not compile as C++11"

cat >"$work/config.cpp" <<'EOF'
// Links libcorr.so from C++: extern "C" linkage, config defaults, create and destroy.
#include <corr.h>

#include <cstdio>

static void wake(struct corr_waiter *, void *, void *)
{
}

int main()
{
    corr_engine_config config;
    corr_engine *engine = nullptr;

    corr_thread_register();
    corr_engine_config_init(&config);
    if (config.size != sizeof(config) || config.wake != nullptr) {
        std::fprintf(stderr, "corr_engine_config_init left size %zu, expected %zu\n",
                     config.size, sizeof(config));
        return 1;
    }
    config.wake = wake;
    int rc = corr_engine_create(&config, &engine);
    if (rc != 0) {
        std::fprintf(stderr, "corr_engine_create failed: %s\n", corr_strerror(rc));
        return 1;
    }
    rc = corr_engine_ack(engine, "x", 1, &config);
    corr_engine_destroy(engine);
    corr_thread_unregister();
    std::printf("C++ program: ack without a waiter returned %d (%s)\n", rc, corr_strerror(rc));
    return rc == CORR_ACK_NO_WAITER ? 0 : 1;
}
EOF
# shellcheck disable=SC2086
if g++ -std=c++11 -Wall -Wextra -Werror $corr_cflags -o "$work/config-cpp" "$work/config.cpp" \
    $corr_libs; then
    run_binary "$work/config-cpp" shared
else
    fail "the C++ program did not compile or link against libcorr.so"
fi

if [ "$failures" -ne 0 ]; then
    echo "check-install: $failures check(s) failed" >&2
    exit 1
fi
echo "check-install: the installed package works with CMake, pkg-config, C and C++"
