#!/usr/bin/env bash
# Draw PNG plots from a raw results file of tools/bench-http.sh (its "result key=value" lines):
#   throughput-http1.png, throughput-h2.png   correlations/s vs pairs, per system: median over
#                                             valid runs, error bars from min to max; the h2o
#                                             static-file ceiling is drawn as requests/s / 2
#   latency-SCENARIO.png                      p50, p90, p99, p99.9 and max of ack-to-answer
#                                             latency per system (medians over runs), per
#                                             pairs scenario
#   rss.png                                   server RSS growth vs held waiters, per system and
#                                             protocol
# Usage: tools/bench-plot.sh RESULTS.txt [OUTPUT_DIR]   (default: RESULTS without .txt, + -plots)
# Runs that are invalid or that saturated the load generator are left out.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/deps.sh
. "$top/tools/deps.sh"

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
}
if [ "${1:-}" = --help ]; then
    usage
    exit 0
fi
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
    usage >&2
    if [ $# -ge 1 ]; then
        echo "bench-plot: no such file: $1" >&2
    fi
    exit 2
fi
results=$1
outdir=${2:-"${results%.txt}-plots"}
corr_require_packages gnuplot-nox
mkdir -p "$outdir"
data=$(mktemp -d /tmp/corr-bench-plot.XXXXXX)
trap 'rm -rf "$data"' EXIT

# Split the valid, unsaturated result lines into small data files, one per series:
#   tp-PROTO-SYSTEM.dat   pairs median min max
#   lat-SCENARIO.dat      system p50 p90 p99 p999 max   (medians)
#   rss.dat               system-proto waiters rss_growth_mib bytes_per_waiter
awk -v dir="$data" '
function val(key,   i, kv) {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == key) return kv[2] }
    return ""
}
function median(s,   a, n, i, j, t) {
    n = split(s, a, " ");
    for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    lo = a[1]; hi = a[n];
    return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
/^result / {
    if (val("valid") != "1" || val("saturated") == "1") next;
    sys = val("system"); sc = val("scenario"); mode = val("mode");
    if (mode == "pairs" || mode == "static") {
        split(sc, part, "-"); proto = part[2]; pairs = part[3];
        rate = (mode == "pairs") ? val("corr_per_s") : val("req_per_s") / 2;
        key = proto SUBSEP sys SUBSEP pairs;
        if (!(key in tp)) tpkeys[++ntp] = key;
        tp[key] = tp[key] " " rate;
    }
    if (mode == "pairs") {
        key = sc SUBSEP sys;
        if (!(key in lat)) latkeys[++nlat] = key;
        lat[key] = 1;
        p50[key] = p50[key] " " val("lat_p50_us"); p90[key] = p90[key] " " val("lat_p90_us");
        p99[key] = p99[key] " " val("lat_p99_us"); p999[key] = p999[key] " " val("lat_p999_us");
        pmax[key] = pmax[key] " " val("lat_max_us");
    }
    if (mode == "hold" && val("bytes_per_waiter") + 0 > 0) {
        key = sys "-" val("proto") SUBSEP val("waiters");
        if (!(key in rss)) rsskeys[++nrss] = key;
        rss[key] = rss[key] " " (val("rss_held_kib") - val("rss_before_kib")) / 1024;
        bpw[key] = bpw[key] " " val("bytes_per_waiter");
    }
}
END {
    for (i = 1; i <= ntp; i++) {
        split(tpkeys[i], k, SUBSEP); m = median(tp[tpkeys[i]]);
        printf "%s %s %s %s\n", k[3], m, lo, hi >> (dir "/tp-" k[1] "-" k[2] ".dat");
    }
    for (i = 1; i <= nlat; i++) {
        split(latkeys[i], k, SUBSEP); key = latkeys[i];
        printf "%s %s %s %s %s %s\n", k[2], median(p50[key]), median(p90[key]), median(p99[key]),
            median(p999[key]), median(pmax[key]) >> (dir "/lat-" k[1] ".dat");
    }
    for (i = 1; i <= nrss; i++) {
        split(rsskeys[i], k, SUBSEP); key = rsskeys[i];
        printf "%s %s %s %s\n", k[1], k[2], median(rss[key]), median(bpw[key]) >> (dir "/rss.dat");
    }
}' "$results"

common='set terminal pngcairo size 960,600 font ",11"
set grid
set key top left'
made=()

for proto in http1 h2; do
    files=$(ls "$data"/tp-"$proto"-*.dat 2>/dev/null || true)
    [ -n "$files" ] || continue
    plots=()
    for f in $files; do
        sort -n -o "$f" "$f"
        system=${f##*/tp-"$proto"-}
        system=${system%.dat}
        title=$system
        [ "$system" = h2o-static ] && title="h2o static file (requests/s / 2)"
        plots+=("'$f' using 1:2:3:4 with yerrorlines lw 2 title '$title'")
    done
    png="$outdir/throughput-$proto.png"
    gnuplot <<EOF
$common
set output '$png'
set title 'Correlations per second vs concurrent pairs, $proto (median, min-max bars)'
set logscale x 2
set xlabel 'pairs'
set ylabel 'correlations/s'
set yrange [0:*]
plot $(IFS=,; echo "${plots[*]}")
EOF
    made+=("$png")
done

for f in "$data"/lat-*.dat; do
    [ -e "$f" ] || continue
    scenario=${f##*/lat-}
    scenario=${scenario%.dat}
    png="$outdir/latency-$scenario.png"
    gnuplot <<EOF
$common
set output '$png'
set title 'Ack-to-answer latency, $scenario (medians over runs)'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set logscale y
set ylabel 'microseconds'
set key top left
plot '$f' using 2:xtic(1) title 'p50', '' using 3 title 'p90', '' using 4 title 'p99', \
     '' using 5 title 'p99.9', '' using 6 title 'max'
EOF
    made+=("$png")
done

if [ -s "$data/rss.dat" ]; then
    png="$outdir/rss.png"
    plots=()
    color=0
    for series in $(cut -d' ' -f1 "$data/rss.dat" | sort -u); do
        color=$((color + 1))
        awk -v s="$series" '$1 == s' "$data/rss.dat" | sort -k2,2n >"$data/rss-$series.dat"
        plots+=("'$data/rss-$series.dat' using 2:3 with linespoints lw 2 pt 7 lc $color title '$series', '' using 2:3:(sprintf('%.0f B/waiter', \$4)) with labels offset 0,1 tc lt $color notitle")
    done
    gnuplot <<EOF
$common
set output '$png'
set title 'Server RSS growth vs held waiters (median over runs)'
set logscale xy
set xlabel 'held waiters'
set ylabel 'RSS growth (MiB)'
plot $(IFS=,; echo "${plots[*]}")
EOF
    made+=("$png")
fi

if [ ${#made[@]} -eq 0 ]; then
    echo "bench-plot: no valid result lines to plot in $results" >&2
    exit 1
fi
printf 'bench-plot: wrote %s\n' "${made[@]}" >&2
