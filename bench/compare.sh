#!/usr/bin/env bash
# Measures a herd server on this machine against the physical-limit reference
# (`herd-bench echo-server`: a line server that answers each line with a line of the same
# length), then the herd's propagation, memory and places overhead, and judges each figure
# against its target (bench/RESULTS.md lists the targets).
#
#   bash bench/compare.sh             # about 2-5 minutes
#   QUICK=1 bash bench/compare.sh     # about 1 minute
#
# Servers (the herd and the echo reference) are pinned to CPU 0 and the load generator to
# CPU 1 (taskset), so they do not fight over one core. IAMAT load runs alternate A B A B
# (echo, herd, echo, herd), four rounds at full size, so that drifts of the machine (which
# are large on a shared machine) hit both sides alike; each run's figures are printed, then
# the ratio herd/echo of the means for throughput and p99. It ends with each target, this
# run's figure for it, and whether it was met.
# Everything listens on 127.0.0.1 only, every run is bounded in time, and every process
# this script starts is killed when it exits (also on Ctrl-C).
#
# Environment: QUICK=1 (short runs), CONNS (IAMAT connections, 50), PORT_BASE (first of the
# ten ports used, 17100), SKIP_BUILD=1 (use the release binaries as they are), DETAIL=1
# (under each IAMAT round, where the servers' CPU went: user and system time of the threads
# that serve, the log threads' time, and page faults, each per request).
set -euo pipefail
cd "$(dirname "$0")/.."

# Thousands of idle connections need as many file descriptors, here and in the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

QUICK=${QUICK:-0}
DETAIL=${DETAIL:-0}
CONNS=${CONNS:-50}
PORT_BASE=${PORT_BASE:-17100}
if [[ $QUICK == 1 ]]; then
    DURATION=2 ROUNDS=2 FLOOD_COUNT=2000 RATE_COUNT=500 IDLE_CONNS=2000 RECORDS=200000 WHATSAT_DURATION=2
else
    DURATION=5 ROUNDS=4 FLOOD_COUNT=10000 RATE_COUNT=2000 IDLE_CONNS=10000 RECORDS=1000000 WHATSAT_DURATION=5
fi
RATE=1000
LIMIT=$((DURATION * 4 + 120)) # seconds any one benchmark command may take

ECHO_ADDR=127.0.0.1:$PORT_BASE
CLARK_ADDR=127.0.0.1:$((PORT_BASE + 1))
JAQUEZ_ADDR=127.0.0.1:$((PORT_BASE + 2))
BAILEY_ADDR=127.0.0.1:$((PORT_BASE + 3))
BONA_ADDR=127.0.0.1:$((PORT_BASE + 4))
CAMPBELL_ADDR=127.0.0.1:$((PORT_BASE + 5))
WATCHER_ADDR=127.0.0.1:$((PORT_BASE + 6))
PLACES_ADDR=127.0.0.1:$((PORT_BASE + 9))

BIN=target/release/herd
BENCH=target/release/herd-bench
SCRIPT=bench
# shellcheck source=bench/servers.sh
source bench/servers.sh
build_release
pin_cpus

# mean NUMBERS...: their mean.
mean() {
    printf '%s\n' "$@" | awk '{ s += $1; n++ } END { if (n) printf "%.0f", s / n; else print 0 }'
}

# mean2 NUMBERS...: their mean, to two decimals.
mean2() {
    printf '%s\n' "$@" | awk '{ s += $1; n++ } END { if (n) printf "%.2f", s / n; else print 0 }'
}

# ratio A B: A / B to three decimals (two would print 0.597 as 0.60, against a target of
# 0.6).
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }'
}

# cpu_detail PIDS...: the processes' ticks so far in the threads that serve (user, system)
# and in their log threads (`log-<Name>`, user and system), and their minor page faults.
cpu_detail() {
    local pid task
    for pid in "$@"; do
        sed 's/^.*) //' /proc/"$pid"/stat 2>/dev/null | awk '{ print "faults", $8 }'
        for task in /proc/"$pid"/task/*; do
            printf '%s ' "$(cat "$task"/comm 2>/dev/null)"
            sed 's/^.*) //' "$task"/stat 2>/dev/null | awk '{ print $12 + $13, $12, $13 }'
        done
    done | awk '$1 == "faults" { f += $2; next }
        $1 ~ /^log-/ { l += $2; next }
        { u += $3; s += $4 }
        END { print u + 0, s + 0, l + 0, f + 0 }'
}

# detail BEFORE AFTER REQUESTS: the line DETAIL=1 prints under a round, from two `cpu_detail`s.
detail() {
    awk -v b="$1" -v a="$2" -v n="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        split(b, x, " "); split(a, y, " "); if (n <= 0) exit
        us = 1e6 / hz / n
        printf "         serving: user %.2f, system %.2f us/req; log threads %.2f us/req; %.0f page faults per 1000 req\n",
            (y[1] - x[1]) * us, (y[2] - x[2]) * us, (y[3] - x[3]) * us, (y[4] - x[4]) * 1000 / n }'
}

# The /proc/stat line of the servers' CPU: CPU 0 when they are pinned there.
STAT_CPU=cpu
if [[ ${#SERVER_CPU[@]} -gt 0 ]]; then
    STAT_CPU=cpu0
fi

# cpu_time: the servers' CPU's stolen and total time so far (clock ticks, from /proc/stat).
# Stolen time is what the hypervisor gave to other machines: a round with much of it ran on
# a slower machine than its neighbors, whichever server it measured.
cpu_time() {
    awk -v c="$STAT_CPU" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print $9, t }' /proc/stat
}

# ab TITLE ADDR_A NAME_A PIDS_A ADDR_B NAME_B PIDS_B IAMAT_OPTIONS...: IAMAT load on A and B
# alternately, ROUNDS times each; prints every run, with the CPU time the processes PIDS_A
# (or PIDS_B, space-separated) took per request and the share of the servers' CPU stolen by
# the hypervisor, and the ratios B/A of the means. CPU per request does not depend on
# whether the load tool keeps up, as throughput does.
ab() {
    local title=$1 addr_a=$2 name_a=$3 pids_a=$4 addr_b=$5 name_b=$6 pids_b=$7
    shift 7
    local -a rps_a=() rps_b=() p99_a=() p99_b=() cpu_a=() cpu_b=()
    local round side addr name pids json rps p50 p99 errors before after cpu time_before time_after
    local detail_before detail_after
    local tick
    tick=$(getconf CLK_TCK)
    echo
    echo "== $title: IAMAT $*, $ROUNDS rounds of $name_a and $name_b, ${DURATION}s each"
    printf '  %-6s %-9s %10s %8s %8s %8s %7s %11s %7s\n' round server req/s p50us p99us maxus \
        errors cpu-us/req stolen
    for round in $(seq "$ROUNDS"); do
        for side in A B; do
            if [[ $side == A ]]; then
                addr=$addr_a name=$name_a pids=$pids_a
            else
                addr=$addr_b name=$name_b pids=$pids_b
            fi
            # shellcheck disable=SC2086 # PIDS is a list
            before=$(cpu_ticks $pids)
            # shellcheck disable=SC2086
            [[ $DETAIL == 1 ]] && detail_before=$(cpu_detail $pids)
            time_before=$(cpu_time)
            json=$(bench iamat --addr "$addr" --duration "$DURATION" "$@" --json)
            # shellcheck disable=SC2086
            after=$(cpu_ticks $pids)
            # shellcheck disable=SC2086
            [[ $DETAIL == 1 ]] && detail_after=$(cpu_detail $pids)
            time_after=$(cpu_time)
            if [[ -z $json ]]; then
                continue
            fi
            rps=$(field throughput_rps <<<"$json")
            p50=$(field p50 <<<"$json")
            p99=$(field p99 <<<"$json")
            errors=$(field errors <<<"$json")
            cpu=$(awk -v t=$((after - before)) -v hz="$tick" -v n="$(field count <<<"$json")" \
                'BEGIN { if (n > 0) printf "%.2f", t / hz / n * 1e6; else print 0 }')
            printf '  %-6s %-9s %10.0f %8s %8s %8s %7s %11s %7s\n' "$round" "$name" "$rps" \
                "$p50" "$p99" "$(field max <<<"$json")" "$errors" "$cpu" \
                "$(stolen "$time_before" "$time_after")"
            if [[ $DETAIL == 1 ]]; then
                detail "$detail_before" "$detail_after" "$(field count <<<"$json")"
            fi
            if [[ $side == A ]]; then
                rps_a+=("$rps") p99_a+=("$p99") cpu_a+=("$cpu")
            else
                rps_b+=("$rps") p99_b+=("$p99") cpu_b+=("$cpu")
            fi
        done
    done
    local ra rb pa pb ca cb
    ra=$(mean "${rps_a[@]}") rb=$(mean "${rps_b[@]}") pa=$(mean "${p99_a[@]}") pb=$(mean "${p99_b[@]}")
    ca=$(mean2 "${cpu_a[@]}") cb=$(mean2 "${cpu_b[@]}")
    printf '  mean   %-9s %10s req/s, p99 %s us, CPU %s us/req\n' "$name_a" "$ra" "$pa" "$ca"
    printf '  mean   %-9s %10s req/s, p99 %s us, CPU %s us/req\n' "$name_b" "$rb" "$pb" "$cb"
    AB_THROUGHPUT=$(ratio "$rb" "$ra") AB_P99=$(ratio "$pb" "$pa")
    echo "  ratio $name_b/$name_a: throughput $AB_THROUGHPUT, p99 $AB_P99, CPU per request $(ratio "$cb" "$ca")"
}

# stolen BEFORE AFTER: the share of the servers' CPU stolen between two `cpu_time`s.
stolen() {
    awk -v b="$1" -v a="$2" 'BEGIN { split(b, x, " "); split(a, y, " ")
        if (y[2] > x[2]) printf "%.1f%%", 100 * (y[1] - x[1]) / (y[2] - x[2]); else print "?" }'
}

# verdict WHAT VALUE OP LIMIT: prints whether VALUE meets the target "OP LIMIT" (<= or >=);
# a VALUE that is not a number (a benchmark failed) meets nothing.
verdict() {
    local met
    met=$(awk -v v="$2" -v op="$3" -v l="$4" 'BEGIN {
        if (v !~ /^[-+]?[0-9]+(\.[0-9]+)?$/) print "no figure"
        else if ((op == "<=") ? v + 0 <= l + 0 : v + 0 >= l + 0) print "met"
        else print "MISSED" }')
    printf '  %-52s %10s  (target %s %s)  %s\n' "$1" "${2:-?}" "$3" "$4" "$met"
}

mkdir -p "$TMP/logs"
# Clark: the server under load (with a key and no cache, for WHATSAT); Jaquez: a fresh one
# whose memory is weighed. Both call the places server `herd-bench whatsat` starts.
cat >"$TMP/single.toml" <<EOF
[places]
url = "http://$PLACES_ADDR/nearbysearch/json"
cache_ttl_s = 0

[log]
dir = "$TMP/logs"

[store]
dir = "$TMP/data"

[[nodes]]
name = "Clark"
addr = "$CLARK_ADDR"

[[nodes]]
name = "Jaquez"
addr = "$JAQUEZ_ADDR"
EOF
# A chain of three: Bailey - Bona - Campbell (without store files: the chain's target is the
# links' cost alone; the store file's has a target of its own). Campbell's neighbor Watcher
# is played by `herd-bench flood --listen`, which takes the records off Campbell's link as
# they come.
herd_config "$TMP/logs" '[["Bailey", "Bona"], ["Bona", "Campbell"], ["Campbell", "Watcher"]]' \
    "Bailey=$BAILEY_ADDR" "Bona=$BONA_ADDR" "Campbell=$CAMPBELL_ADDR" "Watcher=$WATCHER_ADDR" \
    >"$TMP/chain.toml"

echo "herd-bench: $(nproc) CPUs, servers on CPU 0, load on CPU 1; QUICK=$QUICK; $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

start echo "${SERVER_CPU[@]}" "$BENCH" echo-server --addr "$ECHO_ADDR"
ECHO_PID=$LAST_PID
# Clark first without its store file (HERD_STORE__DIR empty): the first two targets are the
# serving path alone; then with the store file (the default, fsync = "everysec", which has
# a target of its own), then with fsync = "always".
start clark env GOOGLE_PLACES_API_KEY=bench HERD_STORE__DIR= "${SERVER_CPU[@]}" \
    "$BIN" run Clark -c "$TMP/single.toml"
CLARK_PID=$LAST_PID

ab "one server vs echo" "$ECHO_ADDR" echo "$ECHO_PID" "$CLARK_ADDR" herd "$CLARK_PID" \
    --conns "$CONNS"
ONE_THROUGHPUT=$AB_THROUGHPUT ONE_P99=$AB_P99
ab "one server vs echo, pipelined" "$ECHO_ADDR" echo "$ECHO_PID" "$CLARK_ADDR" herd "$CLARK_PID" \
    --conns 4 --pipeline 16

echo
echo "== WHATSAT: the latency the herd adds over calling the places server directly"
bench whatsat --addr "$CLARK_ADDR" --places-addr "$PLACES_ADDR" --duration "$WHATSAT_DURATION" |
    tee -a "$TMP/figures.txt"
stop "$CLARK_PID"

# With its store file, as it runs by default: each record written before its answer, the
# file synced once a second.
start clark-everysec env GOOGLE_PLACES_API_KEY=bench "${SERVER_CPU[@]}" \
    "$BIN" run Clark -c "$TMP/single.toml"
CLARK_PID=$LAST_PID
ab "one server with its store file (fsync = everysec) vs echo" "$ECHO_ADDR" echo "$ECHO_PID" \
    "$CLARK_ADDR" herd-everysec "$CLARK_PID" --conns "$CONNS"
EVERYSEC_THROUGHPUT=$AB_THROUGHPUT
stop "$CLARK_PID"
rm -f "$TMP/data/Clark.aof"

# With fsync = "always": each answer waits for a sync of the store file (one sync for all
# the records waiting at that moment). No target: it says what a sync costs on this disk.
start clark-always env GOOGLE_PLACES_API_KEY=bench HERD_STORE__FSYNC=always "${SERVER_CPU[@]}" \
    "$BIN" run Clark -c "$TMP/single.toml"
CLARK_PID=$LAST_PID
ab "one server with fsync = always vs echo" "$ECHO_ADDR" echo "$ECHO_PID" "$CLARK_ADDR" \
    herd-always "$CLARK_PID" --conns "$CONNS"
ALWAYS_THROUGHPUT=$AB_THROUGHPUT ALWAYS_P99=$AB_P99
stop "$CLARK_PID"

echo
echo "== memory of a fresh server (Jaquez)"
start jaquez env -u GOOGLE_PLACES_API_KEY "${SERVER_CPU[@]}" "$BIN" run Jaquez -c "$TMP/single.toml"
JAQUEZ_PID=$LAST_PID
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $((IDLE_CONNS + 200)) ]]; then
    IDLE_CONNS=$(($(ulimit -n) - 200))
    echo "  (open-file limit $(ulimit -n): holding $IDLE_CONNS connections)"
fi
bench idle --addr "$JAQUEZ_ADDR" --conns "$IDLE_CONNS" --pid "$JAQUEZ_PID" | tee -a "$TMP/figures.txt"
bench records --addr "$JAQUEZ_ADDR" --count "$RECORDS" --pid "$JAQUEZ_PID" | tee -a "$TMP/figures.txt"
stop "$JAQUEZ_PID"

# Jaquez's store file now holds its records: started again, it reads them all before it
# accepts anyone, and its log says how long that took.
echo
echo "== the store file (Jaquez): read back at start"
start jaquez-again env -u GOOGLE_PLACES_API_KEY "${SERVER_CPU[@]}" "$BIN" run Jaquez -c "$TMP/single.toml"
stop "$LAST_PID"
loaded=$(sed -n 's/.* - \([0-9]*\) records read from .* (\([0-9]*\) lines, \([0-9]*\) ms).*/\1 \2 \3/p' \
    "$TMP/logs/Jaquez.log" | tail -n 1)
read -r LOADED_RECORDS LOADED_LINES LOAD_MS <<<"$loaded"
AOF_BYTES=$(stat -c %s "$TMP/data/Jaquez.aof")
echo "  $LOADED_RECORDS records ($LOADED_LINES lines, $AOF_BYTES bytes) read in $LOAD_MS ms;" \
    "$((AOF_BYTES / (LOADED_LINES > 0 ? LOADED_LINES : 1))) bytes on disk per record" |
    tee -a "$TMP/figures.txt"

start bailey env -u GOOGLE_PLACES_API_KEY HERD_STORE__DIR= "${SERVER_CPU[@]}" "$BIN" run Bailey -c "$TMP/chain.toml"
CHAIN_PIDS=$LAST_PID
start bona env -u GOOGLE_PLACES_API_KEY HERD_STORE__DIR= "${SERVER_CPU[@]}" "$BIN" run Bona -c "$TMP/chain.toml"
CHAIN_PIDS+=" $LAST_PID"
start campbell env -u GOOGLE_PLACES_API_KEY HERD_STORE__DIR= "${SERVER_CPU[@]}" "$BIN" run Campbell -c "$TMP/chain.toml"
CHAIN_PIDS+=" $LAST_PID"
# The links are up once a record sent to one end is known at the other.
bench flood --send "$BAILEY_ADDR" --watch "$CAMPBELL_ADDR" --count 1 --timeout 15 --json >/dev/null

# Propagation first, while the stores are small (the watcher's link starts with a snapshot
# of Campbell's store, which the tool lets pass before it starts).
echo
echo "== propagation over two hops (Bailey -> Bona -> Campbell), watched as Campbell's neighbor"
# Three bursts one after another: the first, on fresh servers, also pays their first use of
# memory; each is printed.
for _ in 1 2 3; do
    bench flood --send "$BAILEY_ADDR" --watch "$CAMPBELL_ADDR" --listen "$WATCHER_ADDR" \
        --count "$FLOOD_COUNT" | tee -a "$TMP/figures.txt"
done
bench flood --send "$BAILEY_ADDR" --watch "$CAMPBELL_ADDR" --listen "$WATCHER_ADDR" \
    --count "$RATE_COUNT" --rate "$RATE" | tee -a "$TMP/figures.txt"

# CPU per request of the chain: all three servers' (they share the core).
ab "middle of a chain of three (links up, flooding both ways) vs echo" \
    "$ECHO_ADDR" echo "$ECHO_PID" "$BONA_ADDR" herd-mid "$CHAIN_PIDS" --conns "$CONNS"
CHAIN_THROUGHPUT=$AB_THROUGHPUT

echo
echo "server logs written: $(du -sh "$TMP/logs" | cut -f1) (removed on exit)"
# A log that cannot keep up drops events and says so; none should be dropped here.
dropped=$(cat "$TMP"/logs/*.log | sed -n 's/.* log buffer full: \([0-9]*\) events not logged$/\1/p' |
    awk '{ s += $1 } END { print s + 0 }')
echo "log events dropped: $dropped"

# figure PATTERN: the first number (signed or not) after PATTERN in the figures printed
# above.
figure() {
    sed -n "s/.*$1 *\([-+]\?[0-9.]*\).*/\1/p" "$TMP/figures.txt" | head -n 1
}
echo
echo "== against the targets (this run$([[ $QUICK == 1 ]] && echo ", QUICK: smaller than the targets' sizes"))"
verdict "one server: IAMAT throughput / the echo's" "$ONE_THROUGHPUT" ">=" 0.8
verdict "one server: IAMAT p99 / the echo's" "$ONE_P99" "<=" 1.5
verdict "chain middle, links up: IAMAT throughput / the echo's" "$CHAIN_THROUGHPUT" ">=" 0.6
burst=0
while read -r known_by_ack; do
    burst=$((burst + 1))
    verdict "two-hop burst $burst of $FLOOD_COUNT: T_known / T_ack" "$known_by_ack" "<=" 1.5
done < <(sed -n 's/.*T_known \/ T_ack = \([0-9.]*\).*/\1/p' "$TMP/figures.txt")
# The propagation row: p50, p90, p99, ... in microseconds.
verdict "propagation at ${RATE}/s, two hops: p99 (us)" \
    "$(awk '$1 == "propagation" { print $4; exit }' "$TMP/figures.txt")" "<=" 2000
verdict "memory per idle connection (bytes)" \
    "$(sed -n 's/^ *\([0-9]*\) bytes per idle connection.*/\1/p' "$TMP/figures.txt")" "<=" 6144
verdict "memory per stored record (bytes)" "$(figure "after:")" "<=" 300
verdict "WHATSAT: added at the median (us)" "$(figure "added by the herd: p50")" "<=" 300
verdict "one server, store file everysec: throughput / the echo's" "$EVERYSEC_THROUGHPUT" ">=" 0.75
verdict "store file: $LOADED_RECORDS records read back at start (ms)" "$LOAD_MS" "<=" 2000
echo "  (no target) one server, fsync = always: throughput / the echo's $ALWAYS_THROUGHPUT," \
    "p99 / the echo's $ALWAYS_P99; $((AOF_BYTES / (LOADED_LINES > 0 ? LOADED_LINES : 1))) bytes" \
    "on disk per record"
