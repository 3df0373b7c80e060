#!/usr/bin/env bash
# Build corrd (Release) and run it in the foreground with default settings, or with the options
# given to this script (see `corrd --help`). Default: listen on 127.0.0.1:8080.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/deps.sh
. "$top/tools/deps.sh"
# shellcheck disable=SC2086
corr_require_packages $CORR_BUILD_PACKAGES

build="$top/build/release"
cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCORR_BUILD_TESTS=OFF -DCORR_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" --target corrd -j "$(nproc)" >/dev/null
echo "corr: starting $build/http/corrd $*" >&2
exec "$build/http/corrd" "$@"
