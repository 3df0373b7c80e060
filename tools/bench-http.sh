#!/usr/bin/env bash
# HTTP benchmarks of corrd against its peers: nginx + nchan (bench/peers/nchan), a Go standard-
# library server (bench/peers/go-corr) and the h2o static-file ceiling (bench/peers/h2o-static,
# measured with wrk). Each server runs pinned to CPU 0 with one worker thread or process, and the
# load generator (bench/loadgen.c, or wrk) runs pinned to CPU 1, so results need 2 or more CPUs.
#
#   tools/bench-http.sh            full matrix: 3 rounds, interleaved across systems, of
#                                  pairs=1,16,256 (HTTP/1.1, and HTTP/2 where the server speaks
#                                  h2c) and hold 10,000 waiters (HTTP/1.1 and HTTP/2); about
#                                  15 minutes
#   tools/bench-http.sh --million  also hold 1,000,000 HTTP/2 waiters on corrd once per round
#   tools/bench-http.sh --smoke    one short round on corrd only (1 s, pairs=4, hold 200); checks
#                                  that every result line is well-formed and valid, and nothing
#                                  about timings; exits non-zero otherwise
# Options: --rounds N, --seconds S (measured window of each run), --warmup S, --hold-waiters N
# (default 10000), --out FILE.
#
# Output: raw result lines in bench/results/http-DATE.txt (--out to change), and medians with
# min-max spreads and ratios vs nchan and vs the static ceiling in bench/results/http-DATE-
# summary.txt. tools/bench-plot.sh draws PNG plots from the raw file. Every server this script
# starts is stopped by its PID, also on error or Ctrl-C. All traffic stays on 127.0.0.0/8.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=tools/deps.sh
. "$top/tools/deps.sh"

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
}

smoke=0
million=0
rounds=3
seconds=10
warmup=2
out=
hold_waiters_option=
while [ $# -gt 0 ]; do
    case "$1" in
    --smoke) smoke=1 ;;
    --million) million=1 ;;
    --rounds) rounds=$2; shift ;;
    --seconds) seconds=$2; shift ;;
    --warmup) warmup=$2; shift ;;
    --out) out=$2; shift ;;
    --hold-waiters) hold_waiters_option=$2; shift ;;
    --help | -h) usage; exit 0 ;;
    *) echo "bench-http: unknown option '$1'; try --help" >&2; exit 2 ;;
    esac
    shift
done
if [ "$smoke" = 1 ]; then
    rounds=1
    seconds=1
    warmup=0.5
fi
case "$rounds" in '' | *[!0-9]*) echo "bench-http: invalid --rounds '$rounds'" >&2; exit 2 ;; esac

# Waiter counts and ackers for the hold runs.
hold_waiters=10000
hold_ackers_http1=16
hold_ackers_h2=100
if [ "$smoke" = 1 ]; then
    hold_waiters=200
fi
if [ -n "$hold_waiters_option" ]; then
    hold_waiters=$hold_waiters_option
fi
case "$hold_waiters" in '' | *[!0-9]*) echo "bench-http: invalid --hold-waiters '$hold_waiters'" >&2; exit 2 ;; esac

packages="$CORR_BUILD_PACKAGES libnghttp2-dev util-linux procps iproute2"
if [ "$smoke" = 0 ]; then
    packages="$packages nginx-light libnginx-mod-nchan golang-go wrk h2o"
fi
# shellcheck disable=SC2086 # the package list is meant to split into words
corr_require_packages $packages

if [ "$(nproc)" -lt 2 ]; then
    echo "bench-http: needs 2 CPUs (server on CPU 0, load generator on CPU 1); this machine has $(nproc)" >&2
    exit 1
fi

# ---- build ----

build="$top/build/bench-http"
if [ -n "${CORR_BENCH_CORRD:-}" ] && [ -n "${CORR_BENCH_LOADGEN:-}" ]; then
    # CTest's smoke run passes the binaries of the build under test.
    corrd=$CORR_BENCH_CORRD
    loadgen=$CORR_BENCH_LOADGEN
    mkdir -p "$build"
else
    echo "bench-http: building corrd and corr_loadgen (Release) in $build" >&2
    cmake -S "$top" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCORR_BUILD_TESTS=OFF -DCORR_BUILD_BENCH=ON >/dev/null
    cmake --build "$build" --target corrd corr_loadgen -j "$(nproc)" >/dev/null
    corrd="$build/http/corrd"
    loadgen="$build/bench/corr_loadgen"
fi
go_corr="$build/go-corr"
if [ "$smoke" = 0 ]; then
    echo "bench-http: building bench/peers/go-corr with $(go version)" >&2
    (cd "$top/bench/peers/go-corr" && GOPROXY=off GOFLAGS=-mod=mod GOCACHE="$build/go-cache" \
        GOPATH="$build/go-path" go build -o "$go_corr" .)
fi

# ---- servers ----

scratch=$(mktemp -d /tmp/corr-bench-http.XXXXXX)
# Started as root, h2o and the nginx worker drop privileges to the user "nobody", which must read
# the files here.
chmod 755 "$scratch"
server_pid=
server_pids=()  # PIDs whose RSS and CPU time the load generator reads
server_port=
server_h2_port=

stop_server() {
    [ -n "$server_pid" ] || return 0
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$server_pid" 2>/dev/null; then
        echo "bench-http: server PID $server_pid ignored SIGTERM for 5 s; sending SIGKILL" >&2
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
    server_pid=
    server_pids=()
}

cleanup() {
    stop_server
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wait until @log contains "msg=listening addr=127.0.0.1:PORT" and set server_port.
wait_listening_log() {
    local log=$1
    for _ in $(seq 100); do
        server_port=$(sed -n 's/.*msg=listening addr=127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -n 1)
        [ -n "$server_port" ] && return 0
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "bench-http: server exited before listening; its log:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "bench-http: server did not report a listening address within 10 s" >&2
    return 1
}

# Wait until 127.0.0.1:@port accepts connections.
wait_port() {
    local port=$1
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        kill -0 "$server_pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Pick a TCP port below the ephemeral range, which the load generator's connections fill, and
# that no socket in any state uses.
pick_port() {
    local port low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
    [ "$low" -gt 12000 ] || low=65535
    for _ in $(seq 100); do
        port=$((10000 + RANDOM % (low - 10000)))
        if [ -z "$(ss -Htan "sport = :$port")" ]; then
            echo "$port"
            return 0
        fi
    done
    echo "bench-http: no free TCP port found" >&2
    return 1
}

# Set @log to a new, empty log file for a server start. A reused file would be truncated only after
# the fork, so the previous server's address could still be read from it.
new_log() {
    starts=$((starts + 1))
    log="$scratch/$1-$starts.log"
    : >"$log"
}
starts=0

start_corrd() {
    local log
    new_log corrd
    taskset -c 0 "$corrd" --listen 127.0.0.1:0 --threads 1 --max-pending 2000000 \
        --max-timeout-ms 900000 --drain-ms 0 2>"$log" &
    server_pid=$!
    wait_listening_log "$log"
    server_h2_port=$server_port
    server_pids=("$server_pid")
}

start_go() {
    local log
    new_log go
    GOMAXPROCS=1 taskset -c 0 "$go_corr" -listen 127.0.0.1:0 -max-pending 2000000 \
        -max-timeout-ms 900000 2>"$log" &
    server_pid=$!
    wait_listening_log "$log"
    server_h2_port=
    server_pids=("$server_pid")
}

start_nchan() {
    local dir="$scratch/nchan" attempt
    mkdir -p "$dir"
    for attempt in 1 2 3; do
        server_port=$(pick_port)
        server_h2_port=$(pick_port)
        sed -e "s|@PREFIX@|$dir|g" -e "s|@PORT@|$server_port|g" -e "s|@H2PORT@|$server_h2_port|g" \
            "$top/bench/peers/nchan/nginx.conf.in" >"$dir/nginx.conf"
        : >"$dir/error.log"
        taskset -c 0 nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" 2>"$dir/stderr.log" &
        server_pid=$!
        if wait_port "$server_port" && wait_port "$server_h2_port"; then
            local worker
            worker=$(pgrep -P "$server_pid" | head -n 1)
            if [ -z "$worker" ]; then
                echo "bench-http: nginx master $server_pid has no worker process" >&2
                return 1
            fi
            server_pids=("$server_pid" "$worker")
            return 0
        fi
        echo "bench-http: nginx did not start (attempt $attempt):" >&2
        cat "$dir/stderr.log" "$dir/error.log" >&2 2>/dev/null || true
        stop_server
    done
    return 1
}

start_static() {
    local dir="$scratch/h2o-static" attempt
    mkdir -p "$dir/www"
    printf '0123456789abcdef' >"$dir/www/16b"
    chmod -R a+rX "$dir"
    for attempt in 1 2 3; do
        server_port=$(pick_port)
        sed -e "s|@PREFIX@|$dir|g" -e "s|@PORT@|$server_port|g" \
            "$top/bench/peers/h2o-static/h2o.conf.in" >"$dir/h2o.conf"
        : >"$dir/error.log"
        taskset -c 0 h2o -c "$dir/h2o.conf" >"$dir/stdout.log" 2>&1 &
        server_pid=$!
        if wait_port "$server_port"; then
            server_pids=("$server_pid")
            return 0
        fi
        echo "bench-http: h2o did not start (attempt $attempt):" >&2
        cat "$dir/stdout.log" "$dir/error.log" >&2 2>/dev/null || true
        stop_server
    done
    return 1
}

# ---- runs ----

stamp=$(date +%Y%m%d-%H%M%S)
if [ "$smoke" = 1 ]; then
    raw="$scratch/http-smoke.txt"
else
    raw=${out:-"$top/bench/results/http-$stamp.txt"}
    mkdir -p "$(dirname "$raw")"
fi
summary="${raw%.txt}-summary.txt"
runlog="${raw%.txt}.log"
: >"$runlog"
failures=0

write_header() {
    : >"$raw"
    {
        echo "# corr HTTP benchmark, tools/bench-http.sh$([ "$smoke" = 1 ] && echo " --smoke")"
        echo "# date=$(date -u +%Y-%m-%dT%H:%M:%SZ) commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$top" diff --quiet 2>/dev/null || echo "+dirty")"
        echo "# host: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "# rounds=$rounds seconds=$seconds warmup=$warmup hold_waiters=$hold_waiters server CPU 0, generator CPU 1"
        echo "# $("$corrd" --version)"
        if [ "$smoke" = 0 ]; then
            echo "# $(nginx -v 2>&1), nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan); $(go version); $(h2o --version | head -n 1); $(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2)"
        fi
    } >>"$raw"
}

# Run the load generator against the running server; append its result line to the raw file.
run_loadgen() {
    local system=$1 round=$2 scenario=$3 port=$4
    shift 4
    local pid_args=() pid line
    for pid in "${server_pids[@]}"; do
        pid_args+=(--server-pid "$pid")
    done
    echo "== round $round $scenario $system" >>"$runlog"
    line=$(taskset -c 1 "$loadgen" --target "127.0.0.1:$port" --label "system=$system" \
        --label "round=$round" --label "scenario=$scenario" "${pid_args[@]}" "$@" 2>>"$runlog" |
        grep '^result ' || true)
    if [ -z "$line" ]; then
        line="result system=$system round=$round scenario=$scenario error=no_result_line valid=0"
    fi
    echo "$line" >>"$raw"
    case "$line" in
    *" valid=1"*) ;;
    *) failures=$((failures + 1)); echo "bench-http: INVALID run: round $round $scenario $system (see $runlog)" >&2 ;;
    esac
    echo "$line" | awk -v s="$system" -v sc="$scenario" '{
        m = ""; for (i = 1; i <= NF; i++) {
            split($i, kv, "=");
            if (kv[1] == "corr_per_s" || kv[1] == "acks_per_s" || kv[1] == "bytes_per_waiter" ||
                kv[1] == "lat_p99_us" || kv[1] == "gen_cpu_util" || kv[1] == "valid") m = m " " $i
        }
        printf "bench-http: %-16s %-8s%s\n", sc, s, m }' >&2
}

proc_cpu_ticks() {
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# Convert a wrk latency such as 812.00us, 1.20ms or 2.01s to microseconds.
wrk_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "ms") n *= 1000; else if (u == "s") n *= 1000000;
        printf "%.1f", n }'
}

# The static ceiling: wrk with @conns connections against h2o serving a 16-byte file.
run_static() {
    local round=$1 scenario=$2 conns=$3
    local url="http://127.0.0.1:$server_port/16b" out="$scratch/wrk.out" timef="$scratch/wrk.time"
    local wrk_seconds wrk_warmup before after tck line
    wrk_seconds=$(awk -v s="$seconds" 'BEGIN { printf "%d", (s == int(s)) ? s : int(s) + 1 }')
    wrk_warmup=$(awk -v s="$warmup" 'BEGIN { printf "%d", (s == int(s)) ? s : int(s) + 1 }')
    echo "== round $round $scenario h2o-static" >>"$runlog"
    if [ "$wrk_warmup" -gt 0 ]; then
        taskset -c 1 wrk -t1 -c"$conns" -d"${wrk_warmup}s" "$url" >>"$runlog" 2>&1 || true
    fi
    tck=$(getconf CLK_TCK)
    before=$(proc_cpu_ticks "$server_pid")
    local TIMEFORMAT='%U %S %R'
    { time taskset -c 1 wrk -t1 -c"$conns" -d"${wrk_seconds}s" --latency "$url" >"$out" 2>&1; } 2>"$timef" || true
    after=$(proc_cpu_ticks "$server_pid")
    cat "$out" >>"$runlog"
    line=$(awk -v sys=h2o-static -v round="$round" -v sc="$scenario" -v conns="$conns" \
        -v cpu_ticks=$((after - before)) -v tck="$tck" -v times="$(cat "$timef")" '
        function us(v,   n, u) { n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
            if (u == "ms") n *= 1000; else if (u == "s") n *= 1000000; return n }
        /Requests\/sec:/ { rps = $2 }
        /requests in/ { requests = $1 }
        /Non-2xx or 3xx responses:/ { bad += $NF }
        /Socket errors:/ { gsub(/,/, ""); bad += $4 + $6 + $8 + $10 }
        $1 == "50%" { p50 = us($2) } $1 == "90%" { p90 = us($2) } $1 == "99%" { p99 = us($2) }
        END {
            split(times, t, " "); util = (t[3] > 0) ? (t[1] + t[2]) / t[3] : 0;
            cpu = cpu_ticks / tck;
            printf "result system=%s round=%s scenario=%s mode=static proto=http1 conns=%s", sys, round, sc, conns;
            printf " requests=%d req_per_s=%.0f lat_p50_us=%.1f lat_p90_us=%.1f lat_p99_us=%.1f", requests, rps, p50, p90, p99;
            printf " gen_cpu_util=%.3f saturated=%d server_cpu_s=%.3f server_cpu_us_per_op=%.2f", util, (util > 0.9), cpu, (requests > 0) ? cpu / requests * 1e6 : -1;
            printf " errors=%d valid=%d\n", bad, (rps > 0 && bad == 0) ? 1 : 0 }' "$out")
    echo "$line" >>"$raw"
    case "$line" in
    *" valid=1"*) echo "bench-http: $scenario h2o-static $(echo "$line" | grep -o 'req_per_s=[0-9]*')" >&2 ;;
    *) failures=$((failures + 1)); echo "bench-http: INVALID run: round $round $scenario h2o-static" >&2 ;;
    esac
}

pairs_args() {
    echo --mode pairs --pairs "$1" --seconds "$seconds" --warmup "$warmup"
}

hold_args() {
    local proto=$1 waiters=$2 ackers=$hold_ackers_http1
    if [ "$proto" = h2 ]; then
        ackers=$hold_ackers_h2
    fi
    echo --mode hold --proto "$proto" --waiters "$waiters" --ackers "$ackers" --wait-timeout-ms 600000
}

# Start @system, run one scenario on it, stop it. Servers restart for every run, so that each
# starts from the same state and the hold runs' "RSS before" is a fresh process.
bench_one() {
    local system=$1 round=$2 scenario=$3 proto=$4
    shift 4
    local port
    "start_$system"
    port=$server_port
    if [ "$proto" = h2 ]; then
        port=$server_h2_port
    fi
    # The peer names of corr_loadgen --peer match the system names.
    run_loadgen "$system" "$round" "$scenario" "$port" --peer "$system" --proto "$proto" "$@"
    stop_server
}

bench_static() {
    local round=$1 scenario=$2 conns=$3
    start_static
    run_static "$round" "$scenario" "$conns"
    stop_server
}

write_header
if [ "$smoke" = 1 ]; then
    systems_http1=(corrd)
    systems_h2=(corrd)
    pair_counts=(4)
else
    systems_http1=(corrd nchan go)
    systems_h2=(corrd nchan)
    pair_counts=(1 16 256)
fi

for round in $(seq "$rounds"); do
    echo "bench-http: round $round of $rounds" >&2
    for pairs in "${pair_counts[@]}"; do
        for system in "${systems_http1[@]}"; do
            # shellcheck disable=SC2046
            bench_one "$system" "$round" "pairs-http1-$pairs" http1 $(pairs_args "$pairs")
        done
        # Each pair uses two connections, so the ceiling runs with twice as many.
        if [ "$smoke" = 0 ]; then
            bench_static "$round" "pairs-http1-$pairs" $((2 * pairs))
        fi
    done
    for pairs in "${pair_counts[@]}"; do
        for system in "${systems_h2[@]}"; do
            # shellcheck disable=SC2046
            bench_one "$system" "$round" "pairs-h2-$pairs" h2 $(pairs_args "$pairs")
        done
    done
    for system in "${systems_http1[@]}"; do
        # shellcheck disable=SC2046
        bench_one "$system" "$round" "hold-http1-$hold_waiters" http1 $(hold_args http1 "$hold_waiters") \
            --settle-ms $([ "$smoke" = 1 ] && echo 300 || echo 1000)
    done
    for system in "${systems_h2[@]}"; do
        # shellcheck disable=SC2046
        bench_one "$system" "$round" "hold-h2-$hold_waiters" h2 $(hold_args h2 "$hold_waiters") \
            --settle-ms $([ "$smoke" = 1 ] && echo 300 || echo 1000)
    done
    if [ "$million" = 1 ]; then
        # 10,000 connections x 100 streams; eight source addresses keep ephemeral ports plentiful.
        # shellcheck disable=SC2046
        bench_one corrd "$round" hold-h2-1000000 h2 $(hold_args h2 1000000) --ackers 1000 \
            --settle-ms 3000 --source-ips 127.0.0.2-127.0.0.9 --max-seconds 1200
    fi
done

# ---- checks and summary ----

# Every result line must be "result" followed by key=value tokens with the keys every run has.
check_lines() {
    awk '
    /^result / {
        n++; bad = 0;
        for (i = 2; i <= NF; i++) if ($i !~ /^[a-z0-9_]+=[^ =]+$/) bad = 1;
        for (k in need) delete need[k];
        need["system"]; need["round"]; need["scenario"]; need["mode"]; need["valid"];
        need["server_cpu_s"]; need["gen_cpu_util"]; need["lat_p99_us"];
        for (i = 2; i <= NF; i++) { split($i, kv, "="); delete need[kv[1]] }
        for (k in need) bad = 1;
        if ($NF != "valid=1") bad = 1;
        if (bad) { print "bench-http: malformed or invalid result line: " $0 > "/dev/stderr"; errors++ }
    }
    END { if (n == 0) { print "bench-http: no result lines" > "/dev/stderr"; errors++ } exit errors > 0 }' "$1"
}

summarize() {
    awk '
    function val(key,   i, kv) {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == key) return kv[2] }
        return ""
    }
    # Median and range of the space-separated numbers in s, as "median min max".
    function stats(s,   a, n, i, j, t, med) {
        n = split(s, a, " ");
        for (i = 2; i <= n; i++) { t = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
        med = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2;
        return med " " a[1] " " a[n]
    }
    /^result / {
        sys = val("system"); sc = val("scenario"); mode = val("mode"); key = sc SUBSEP sys;
        if (!(key in seen)) { seen[key] = 1; order[++count] = key }
        total[key]++;
        if (val("valid") != "1" || val("saturated") == "1") { dropped[key]++; next }
        metric = (mode == "pairs") ? val("corr_per_s") : (mode == "hold") ? val("acks_per_s") : val("req_per_s");
        m[key] = m[key] " " metric; p99[key] = p99[key] " " val("lat_p99_us");
        cpu[key] = cpu[key] " " val("server_cpu_us_per_op");
        if (mode == "hold") mem[key] = mem[key] " " val("bytes_per_waiter");
        unit[key] = (mode == "pairs") ? "corr/s" : (mode == "hold") ? "acks/s" : "req/s";
    }
    END {
        printf "%-20s %-10s %4s %10s %-21s %-7s %10s %12s %10s %9s %10s\n", "scenario", "system", "runs",
            "median", "min-max", "unit", "p99_us", "srv_us/op", "B/waiter", "vs_nchan", "vs_static";
        for (i = 1; i <= count; i++) {
            split(order[i], parts, SUBSEP); sc = parts[1]; sys = parts[2]; key = order[i];
            if (m[key] == "") { printf "%-20s %-10s %4d  no valid run\n", sc, sys, 0; continue }
            split(stats(m[key]), s, " "); med[key] = s[1];
        }
        for (i = 1; i <= count; i++) {
            key = order[i]; if (m[key] == "") continue;
            split(key, parts, SUBSEP); sc = parts[1]; sys = parts[2];
            split(stats(m[key]), s, " "); split(stats(p99[key]), l, " "); split(stats(cpu[key]), c, " ");
            nk = sc SUBSEP "nchan"; sk = sc SUBSEP "h2o-static";
            vn = (nk in med && med[nk] > 0 && sys != "h2o-static") ? sprintf("%.2f", s[1] / med[nk]) : "-";
            vs = (sk in med && med[sk] > 0 && sys != "h2o-static") ? sprintf("%.3f", s[1] / med[sk]) : "-";
            b = (mem[key] != "") ? stats(mem[key]) : "-"; split(b, bb, " ");
            printf "%-20s %-10s %4d %10.0f %-21s %-7s %10.1f %12.2f %10s %9s %10s\n", sc, sys,
                total[key] - dropped[key], s[1], sprintf("%.0f-%.0f", s[2], s[3]), unit[key], l[1],
                c[1], (mem[key] != "") ? sprintf("%.0f", bb[1]) : "-", vn, vs;
            if (dropped[key]) printf "%-20s %-10s      (%d run(s) invalid or generator-saturated, left out)\n", sc, sys, dropped[key];
        }
    }' "$1"
}

{
    echo "# summary of $raw"
    echo "# median over valid, unsaturated runs; min-max is the spread of those runs"
    echo "# p99_us and srv_us/op (server CPU microseconds per correlation, ack or request) are medians"
    echo "# vs_nchan: median / nchan's median in the same scenario"
    echo "# vs_static: median / h2o's static-file requests/s at twice the pairs' connection count;"
    echo "#   a correlation costs at least two requests, so 0.5 means the static ceiling's request rate"
    summarize "$raw"
} >"$summary"
cat "$summary" >&2

if [ "$smoke" = 1 ]; then
    if check_lines "$raw" && [ "$failures" = 0 ]; then
        echo "bench-http: smoke passed: $(grep -c '^result ' "$raw") result lines, all well-formed and valid" >&2
        exit 0
    fi
    echo "bench-http: smoke FAILED; load generator output:" >&2
    cat "$runlog" >&2
    exit 1
fi
echo "bench-http: raw results in $raw, summary in $summary, generator log in $runlog" >&2
if [ "$failures" != 0 ]; then
    echo "bench-http: $failures run(s) INVALID; see $runlog" >&2
    exit 1
fi
