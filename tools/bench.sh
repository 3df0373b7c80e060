#!/usr/bin/env bash
# Rerun the whole comparison: the engine benchmark against its baselines, the HTTP benchmark
# against nginx + nchan, the Go baseline and h2o's static-file ceiling (installing the peers from
# Debian packages), and the plots. Results go to bench/results/. About 20 minutes on 2 cores;
# add --million to also hold 1,000,000 HTTP/2 waiters on corrd (a few minutes more, several GB).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
http_args=()
[ "${1:-}" = "--million" ] && http_args+=(--million)

"$top/tools/bench-engine.sh"
"$top/tools/bench-http.sh" "${http_args[@]}"
latest=$(ls -t "$top"/bench/results/http-*.txt | grep -v -- '-summary.txt$' | head -n 1)
"$top/tools/bench-plot.sh" "$latest"
