#!/usr/bin/env bash
# Build the engine benchmark (Release) and compare corr with its mutex and lfht baselines, pinned
# with taskset: threads=1 runs on CPU 1 and threads=2 on CPUs 0 and 1. Every process thread is
# pinned, including liburcu's call_rcu and resize threads. The raw output goes to
# bench/results/engine-<date>.txt. The script prints the median ops/s of each configuration and
# the ratios corr/mutex and corr/lfht (above 1 means corr is faster).
#
#   tools/bench-engine.sh [--rounds R] [--seconds S] [--warmup S]
# Defaults are those of corr_engine_bench --all: 3 rounds of 3 s after 1 s of warmup. Needs 2 CPUs.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/deps.sh
. "$top/tools/deps.sh"
corr_require_packages cmake make gcc libc6-dev pkg-config libck-dev liburcu-dev util-linux

bench_args=()
while [ $# -gt 0 ]; do
    case "$1" in
    --rounds | --seconds | --warmup)
        if [ $# -lt 2 ]; then
            echo "bench-engine: missing value for $1" >&2
            exit 2
        fi
        bench_args+=("$1" "$2")
        shift 2
        ;;
    -h | --help)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "bench-engine: unknown option $1 (expected --rounds, --seconds or --warmup)" >&2
        exit 2
        ;;
    esac
done

if [ "$(nproc --all)" -lt 2 ]; then
    echo "bench-engine: the pinned runs need CPUs 0 and 1; this machine has $(nproc --all) CPU" >&2
    exit 1
fi

build="$top/build/bench-release"
echo "bench-engine: building corr_engine_bench (Release) in $build" >&2
cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCORR_BUILD_TESTS=OFF \
    -DCORR_BUILD_SERVER=OFF -DCORR_BUILD_BENCH=ON >/dev/null
cmake --build "$build" --target corr_engine_bench -j "$(nproc)" >/dev/null
bench="$build/bench/corr_engine_bench"

mkdir -p "$top/bench/results"
out="$top/bench/results/engine-$(date +%Y%m%d-%H%M%S).txt"
{
    echo "# corr engine benchmark, $(date -Iseconds)"
    echo "# commit $(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)$(
        git -C "$top" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    cpu_model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
    echo "# host $(uname -srm), $(nproc --all) CPUs: $cpu_model"
    echo "# load average before the runs: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# arguments: --all ${bench_args[*]}"
} >"$out"

# Both the table on stderr and the result lines on stdout go to the file and to the terminal.
echo "bench-engine: threads=1 on CPU 1" >&2
taskset -c 1 "$bench" --all --threads 1 "${bench_args[@]}" 2>&1 | tee -a "$out" >&2
echo "bench-engine: threads=2 on CPUs 0,1" >&2
taskset -c 0,1 "$bench" --all --threads 2 "${bench_args[@]}" 2>&1 | tee -a "$out" >&2
echo "# load average after the runs: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out"

# Summarise the `median` lines: one row per scenario and thread count.
summary=$(awk '
    /^median / {
        delete field
        for (i = 2; i <= NF; i++) {
            split($i, kv, "=")
            field[kv[1]] = kv[2]
        }
        key = field["scenario"] " " field["threads"]
        if (!(key in seen)) {
            seen[key] = 1
            order[++n] = key
        }
        ops[key, field["impl"]] = field["ops_per_sec"]
    }
    function ratio(a, b) {
        return (a > 0 && b > 0) ? sprintf("%.2f", a / b) : "n/a"
    }
    END {
        printf "%-8s %7s %14s %14s %14s %10s %10s\n", "scenario", "threads", "corr ops/s",
            "mutex ops/s", "lfht ops/s", "corr/mutex", "corr/lfht"
        for (i = 1; i <= n; i++) {
            split(order[i], k, " ")
            c = ops[order[i], "corr"]; m = ops[order[i], "mutex"]; l = ops[order[i], "lfht"]
            printf "%-8s %7s %14s %14s %14s %10s %10s\n", k[1], k[2], c, m, l, ratio(c, m),
                ratio(c, l)
        }
    }' "$out")
echo "$summary" | sed 's/^/# /' >>"$out"
echo "bench-engine: raw output in $out" >&2
echo "$summary"
